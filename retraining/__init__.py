"""Retrain before redeploy: train, evaluate, gate, export, publish, reload; plus versions and rollback."""
