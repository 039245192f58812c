"""The stages depend one way: generation writes a corpus folder (corpus_folder.py owns its
format), training and evaluation read it, and neither imports how it was made."""
import json
import subprocess
import sys

import pytest

GENERATION = {"entigraph.synthesis", "entigraph.generation", "entigraph.engine",
              "entigraph.call_store", "entigraph.prompts", "entigraph.offline_generator",
              "entigraph.openai_backend", "entigraph.batch_files"}


def imported_by(*modules: str) -> set[str]:
    """The entigraph modules that importing `modules` loads, in a fresh interpreter."""
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "import json; print(json.dumps(sorted(m for m in sys.modules "
            "if m.startswith('entigraph'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("stage", [
    ("entigraph.training", "entigraph.train_data", "entigraph.token_data", "entigraph.launch",
     "entigraph.run_identity", "entigraph.models", "entigraph.accelerator"),
    ("entigraph.evaluation", "entigraph.retrieval.pipeline"),
])
def test_training_and_evaluation_never_import_generation(stage):
    loaded = imported_by(*stage)
    assert set(stage) <= loaded and not loaded & GENERATION, loaded & GENERATION
