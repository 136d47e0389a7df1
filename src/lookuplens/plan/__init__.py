"""`lookuplens plan`: what a run will cost before it runs.

From the model's ``config.json`` alone (no weights), the run's settings and the machine,
`plan_run` predicts per stage the forward and backward passes, tokens, FLOPs, peak
memory, disk per table and time (`Plan`). The work is counted from what each stage's
code does (`lookuplens.plan.stages`, `lookuplens.plan.stages_late`), priced by this
machine's CPU measured at the model's widths or by a named GPU's published figures
(`lookuplens.plan.hardware`). docs/performance.md compares predictions with measured runs.
"""

from lookuplens.plan.cpu import cpu_machine
from lookuplens.plan.estimate import Plan, StageEstimate, plan_run
from lookuplens.plan.hardware import GPUS, Machine, gpu_machine, gpu_names
from lookuplens.plan.shape import ModelShape, read_config, shape_from_config
from lookuplens.plan.work import Rates

__all__ = [
    "GPUS",
    "Machine",
    "ModelShape",
    "Plan",
    "Rates",
    "StageEstimate",
    "cpu_machine",
    "gpu_machine",
    "gpu_names",
    "plan_run",
    "read_config",
    "shape_from_config",
]
