"""sceneparse training: models, configs, datasets, the training loop and the evaluation protocol."""
