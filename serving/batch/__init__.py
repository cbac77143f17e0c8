"""Offline batch prediction: `sceneparse predict`, in one process or as a Ray Data job.

    inputs.py    which images a job reads (files, folders, list files, filesystem URIs)
    outputs.py   what a job writes per image (atomically) and once at the end (failures.json, ...)
    image.py     the per-image work both paths run: read, decode, segment, write
    job.py       a job's options, its out folder (lock, manifest, resume) and its report
    local.py     the single-process path
    ray_job.py   the Ray Data path (imports ray lazily: `pip install sceneparse[ray]`)

Both paths call the same `ImagePredictor` on the same `ImageTask`s, so their files are
byte-identical. Ray is optional: nothing here imports it at module level.
"""
