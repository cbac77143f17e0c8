"""The serving side of sceneparse: model repository contract, the one inference pipeline, the gateway.

Nothing under `serving` imports torch: the gateway installs with `pip install .[serve]`.
"""
