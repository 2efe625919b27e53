"""From a trained model to a verified device file: the format table, BN folding, export, int8, runtimes, predict."""

from .export import ExportReport, export_model, export_run, sample_images
from .fold import deploy_form, fold_batchnorm
from .formats import FORMATS, SIDECAR_SUFFIX, Format, format_for_path
from .predict import Prediction, Predictor, load_predictor, predict_files
from .runtime import Runtime, available_cpus, check_threads, load_runtime

__all__ = ["FORMATS", "Format", "SIDECAR_SUFFIX", "format_for_path", "ExportReport", "export_model", "export_run",
           "sample_images", "deploy_form", "fold_batchnorm", "Prediction", "Predictor", "load_predictor",
           "predict_files", "Runtime", "available_cpus", "check_threads", "load_runtime"]
