"""Names of the files a job writes: the contract between runs and reports, in one torch-free place."""

from __future__ import annotations

RESULT_FILE = "metrics.json"
ERROR_FILE = "error.json"
PER_IMAGE_FILE = "per_image.csv"
PER_CLASS_FILE = "per_class.csv"
SAMPLES_FILE = "samples.png"
SAMPLES_DIR = "samples"
# Sub-folders of SAMPLES_DIR: lossless PNGs of the chosen images (inputs: what a degraded run fed the VAE).
SAMPLE_ORIGINALS_DIR = "originals"
SAMPLE_RECONSTRUCTIONS_DIR = "reconstructions"
SAMPLE_INPUTS_DIR = "inputs"
RECONSTRUCTIONS_DIR = "reconstructions"  # run.save_reconstructions: lossless PNGs in class folders
RUN_CONFIG_FILE = "run_config.json"  # the config whose results the directory holds
LOCK_FILE = ".vaes4rs.lock"  # held while a run writes into the directory
CHECKPOINT_FILE = "checkpoint.pt"  # running state of an unfinished job, to resume from
