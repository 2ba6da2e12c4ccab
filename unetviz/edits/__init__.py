"""Interventions: change what flows through the UNet, with capture's guarantees.

```python
from unetviz import edits
with unetviz.intervene(unet, [edits.Reweight("red", 0.0, layers="up")], tokens=..., words=...):
    ...
run = pipe("a red circle", seed=0, edits=[edits.AblateSkip(3), edits.ScaleTemb("up_blocks.1", 0)])
cmp = pipe.compare("a red circle", edits=[edits.Reweight("red", 0)], seed=0)
```

Layers: ``spec`` (edit records), ``model_map`` (names an edit may use), ``probes`` and
``intervene`` (hooks; import only torch), ``session`` (pipeline glue, duck-typed), ``sweep``
(one edit per block or skip). Their command line is ``unetviz.edits_cli``, their app handlers
``unetviz.app.edit_handlers``, their pictures ``unetviz.render.edits`` and the demo model's
adherence scores ``unetviz.training.edit_scores``.
"""

from __future__ import annotations

from .intervene import Intervention, Recording, intervene, record
from .model_map import ModelMap, Skip
from .session import Comparison, compare, for_pipeline
from .spec import (
    AblateBlock,
    AblateSkip,
    Edit,
    EditError,
    Patch,
    Replace,
    Reweight,
    ScaleTemb,
)
from .sweep import Sweep, SweepResult, sweep

__all__ = [
    "AblateBlock",
    "AblateSkip",
    "Comparison",
    "Edit",
    "EditError",
    "Intervention",
    "ModelMap",
    "Patch",
    "Recording",
    "Replace",
    "Reweight",
    "ScaleTemb",
    "Skip",
    "Sweep",
    "SweepResult",
    "compare",
    "for_pipeline",
    "intervene",
    "record",
    "sweep",
]
