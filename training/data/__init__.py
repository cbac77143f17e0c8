"""List-file datasets, joint image/label transforms and the synthetic dataset generator."""
