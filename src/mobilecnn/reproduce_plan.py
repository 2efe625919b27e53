"""What ``mobilecnn reproduce`` runs: the ShuffleNet paper's Table 5 levels and Table 3 models, the plans (the
demo's :data:`QUICK`, the report's :data:`FULL`) and the command's options (:class:`ReproduceConfig`). A module of
definitions only, so that the command line reads them without loading the sections that run them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .fields import cli, positive_int
from .models import published
from .models.shufflenet_v1 import TABLE3_TOP1_ERROR

__all__ = ["ReproducePlan", "ReproduceConfig", "QUICK", "FULL", "TASK_SECTIONS", "OPTION_FIELDS", "UNMEASURED_FIELDS",
           "TABLE5_LEVELS", "TABLE3_MODELS", "MOBILENET_V2"]


def _mobilenet_level(baseline: str) -> str:
    """``0.25 MobileNet (41 MFLOPs)``: the width in the model's name, the MFLOPs its paper publishes."""
    width = baseline.rsplit("_x", 1)[1].replace("_", ".")
    pub = published(baseline)
    assert pub is not None, f"{baseline} is registered with its published figures"
    return f"{width} MobileNet ({pub.macs[224]:g} MFLOPs)"


#: Table 5 levels: (label, the MobileNet V1 baseline, the ShuffleNets of matched complexity).
TABLE5_LEVELS: list[tuple[str, str, list[str]]] = [
    (_mobilenet_level(baseline), baseline, shufflenets) for baseline, shufflenets in (
        ("mobilenet_v1_x0_25", ["shufflenet_v1_g4_x0_5", "shufflenet_v1_g3_x0_5_shallow"]),
        ("mobilenet_v1_x0_5", ["shufflenet_v1_g8_x1_0"]),
        ("mobilenet_v1_x0_75", ["shufflenet_v1_g3_x1_5"]),
        ("mobilenet_v1_x1_0", ["shufflenet_v1_g3_x2_0"]),
    )
]
#: Table 3: each is trained with and without the shuffle.
TABLE3_MODELS: list[str] = list(TABLE3_TOP1_ERROR)
MOBILENET_V2 = ["mobilenet_v2_x0_35", "mobilenet_v2_x0_5", "mobilenet_v2_x0_75", "mobilenet_v2_x1_0",
                "mobilenet_v2_x1_4"]


@dataclass
class ReproducePlan:
    name: str
    levels: int  # how many Table 5 levels (from the smallest)
    table3: list[str]
    seeds: int
    epochs: float
    subset: int | None
    # The full plan keeps what reports/full was run with (the fast recipe before its retune to 0.3@64), so the
    # committed report stays reproducible with the command it prints.
    batch_size: int = 128
    lr: float = 0.1
    val_subset: int | None = None  # test images each run is scored on (a seeded random subset; None: all 10,000)
    nearest_v2: bool = True  # each level also trains the MobileNetV2 width nearest its MobileNet's MACs
    bench_repeats: int = 20
    int8: bool = True
    int8_check_images: int = 10000
    int8_calibration_images: int = 512  # training images the int8 ranges are calibrated on
    threads: int | None = None  # training threads; None: the free cores, decided once at the start
    device: str = "auto"  # training/evaluation device (--device); latency is always measured on the CPU
    # export --format auto of the seed-0 run: the fastest verified file's latency beside fp32's; off by default
    auto: bool = False
    auto_seconds: float = 1.0
    classification: bool = True  # the ShuffleNet claims (Tables 3 and 5)
    longer: bool = True  # those claims again at long_epochs (needs the classification section, run now or recorded)
    segmentation: bool = True  # MobileNetV2 section 6.3 (reproduce_segmentation: SEG_QUICK or SEG_FULL)
    detection: bool = True  # MobileNetV2 section 6.2 (reproduce_detection: DET_QUICK or DET_FULL)
    mobilenet_v2: bool = True  # MobileNetV2 Figure 6, Table 4, cost claims (reproduce_mobilenet_v2: V2_QUICK/V2_FULL)
    # the claims that were within seed noise (Table 3) or did not hold (the margin across levels) at the plan's
    # budget, trained again at ``long_epochs`` epochs over the same images (0: not), ``long_keys`` only
    long_epochs: float = 0.0
    long_keys: tuple[str, ...] = ()
    dense_seeds: int | None = None  # --seeds for those two sections too (None: their plans')


#: The demo's plan (make demo): the current fast recipe (batch 64, peak lr 0.3) on 5,000 images, each run scored on
#: 2,000 test images; no per-model int8 (23 s a model: the demo exports one run to int8 on its own) and no MobileNetV2
#: beside the level (0.35 stayed near chance at this budget, measured: 24.9%), so that the whole demo, the MobileNetV2
#: section included, stays under 10 minutes on 2 cores (measured in docs/training.md).
QUICK = ReproducePlan("quick", levels=1, table3=["shufflenet_v1_g8_x0_5"], seeds=1, epochs=1, subset=5000,
                      batch_size=64, lr=0.3, val_subset=2000, nearest_v2=False, bench_repeats=10, int8=False,
                      int8_check_images=1000, int8_calibration_images=256)
#: 17 models x 3 seeds = 51 runs of 156 steps took 84 min on this 2-core machine (2 threads, idle); the fourth
#: level (MobileNet V1 1.0, ShuffleNet 2x: Table 4's models) adds 3 models.
#: Its longer budget: 3 epochs for the g=8 Table 3 pairs (the paper's largest gaps, +5.2 and +5.8) and the
#: MobileNet V1 baselines of levels 1-3 with their ShuffleNets (the margin claim): 11 models x 3 seeds x 3 epochs,
#: about 100 min on 2 cores from the per-epoch times of the committed report (an estimate, not a measurement).
LONG_KEYS = ("shufflenet_v1_g8_x1_0", "shufflenet_v1_g8_x1_0+noshuffle", "shufflenet_v1_g8_x0_5",
             "shufflenet_v1_g8_x0_5+noshuffle", "mobilenet_v1_x0_25", "shufflenet_v1_g4_x0_5",
             "shufflenet_v1_g3_x0_5_shallow", "mobilenet_v1_x0_5", "mobilenet_v1_x0_75", "shufflenet_v1_g3_x1_5")
FULL = ReproducePlan("full", levels=4, table3=TABLE3_MODELS, seeds=3, epochs=1, subset=20000, long_epochs=3,
                     long_keys=LONG_KEYS)
#: The plan's sections, one per task (``--task``); ``mobilenet_v2`` is the MobileNetV2 paper's claims.
TASK_SECTIONS = ("classification", "longer", "segmentation", "detection", "mobilenet_v2")
#: The fields :meth:`ReproduceConfig.plan` sets from the command line; the others define the plan, and a recorded
#: section whose definition differs from today's is flagged in its report.
OPTION_FIELDS = ("seeds", "threads", "device", "auto", "dense_seeds", *TASK_SECTIONS)
#: The fields that do not change what the classification section measures of a model, so a model recorded under
#: another value is reused: the training threads (latency is timed on one thread), the dense sections' seeds, which
#: sections run, and the longer budget (trained in runs of its own).
UNMEASURED_FIELDS = ("threads", "dense_seeds", "long_epochs", "long_keys", *TASK_SECTIONS)


@dataclass
class ReproduceConfig:
    """``mobilecnn reproduce``: which plan, changed how, written where."""

    quick: bool = field(default=False, metadata=cli("a reduced set that finishes in minutes (default)",
                                                     exclusive="plan"))
    full: bool = field(default=False, metadata=cli(
        "4 levels of Table 5, Table 3, 3 seeds, and the full MobileNetV2 sections (hours on 2 cores)",
        exclusive="plan"))
    seeds: int | None = field(default=None, metadata=cli("override the number of seeds", type=positive_int))
    auto: bool = field(default=False, metadata=cli(
        "also `export --format auto` each seed-0 run: the fastest verified file's latency, runtime and precision "
        "beside fp32's (adds ~5 min per model on 2 busy cores; measured 4.8 min; the full plan's detection section "
        "always does)"))
    threads: int | None = field(default=None, metadata=cli("training threads (default: the free cores)",
                                                           type=positive_int))
    out: str | None = field(default=None, metadata=cli("output directory (default reports/quick or reports/full)"))
    report_only: bool = field(default=False, metadata=cli(
        "rewrite report.md and the plots from OUT/results.json without training"))
    device: str = field(default="auto", metadata=cli(
        "training device: auto, cpu, cuda, cuda:N or mps (latency is always measured on the CPU)"))
    task: str = field(default="all", metadata=cli(
        "classification (the ShuffleNet tables), longer (the full plan's longer budget for the claims the "
        "classification section recorded in OUT), segmentation (MobileNetV2 Table 7 and section 6.3), detection "
        "(MobileNetV2 Tables 5, 6 and section 6.2), mobilenet_v2 (Figure 6, Table 4, the cost claims) or all",
        choices=["all", *TASK_SECTIONS]))

    def plan(self) -> ReproducePlan:
        """:data:`FULL` or :data:`QUICK` (the default), with this config's seeds, threads, device, auto and task."""
        base = FULL if self.full else QUICK
        on = {t: self.task in ("all", t) for t in TASK_SECTIONS}
        return replace(base, seeds=self.seeds or base.seeds, threads=self.threads, device=self.device,
                       auto=self.auto or base.auto, dense_seeds=self.seeds, classification=on["classification"],
                       longer=on["longer"],
                       segmentation=on["segmentation"], detection=on["detection"], mobilenet_v2=on["mobilenet_v2"])

    @property
    def out_dir(self) -> str:
        """``out``, else ``reports/<plan name>``."""
        return self.out or f"reports/{(FULL if self.full else QUICK).name}"
