"""`lookuplens fix`: turn a finding into a weight edit of the model, ranked by its measured
effect within a side-effect budget, and export the edited model with its evidence.

- `edits`: the weight edits (path, neuron, head) and how they are applied and undone;
- `measure`: the target on the prompts, the controls, the side effects on held-out text;
- `candidates`: candidates from the `why` decomposition and a run's findings;
- `search`: measure, combine greedily, rank, choose;
- `run`: inputs, export (``fix.json``, ``model/``, ``report.html``);
- `report`: the offline report page.
"""

from lookuplens.fix.edits import Edit, applied, apply_edits, neuron_directions
from lookuplens.fix.search import FixSettings, NoFixError

__all__ = ["Edit", "FixSettings", "NoFixError", "applied", "apply_edits", "neuron_directions"]
