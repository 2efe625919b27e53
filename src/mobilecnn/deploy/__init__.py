"""From a trained model to a verified device file: the format table, BN folding, writers, runtimes,
verification, the precision step, ``--format auto``, ``bench`` and ``predict``."""

from ..device import available_cpus
from ..validators import check_threads
from .export import ExportConfig, ExportImages, ExportReport, export_model
from .fold import deploy_form, fold_batchnorm
from .formats import FORMATS, SIDECAR_SUFFIX, Format, format_for_path, load_runtime
from .predict import Prediction, Predictor, load_predictor, predict_files
from .run_export import RunExportConfig, export_run, sample_images
from .runtimes import Runtime

__all__ = ["FORMATS", "Format", "SIDECAR_SUFFIX", "format_for_path", "ExportConfig", "ExportImages", "ExportReport",
           "export_model", "RunExportConfig", "export_run", "sample_images", "deploy_form", "fold_batchnorm",
           "Prediction", "Predictor", "load_predictor", "predict_files", "Runtime", "available_cpus", "check_threads",
           "load_runtime"]
