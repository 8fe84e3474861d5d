import sys
from pathlib import Path

import pytest
import torch

# Tiny models on a shared 2-core machine: one thread is ~10x faster than two fighting.
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py, tests/openai_server.py


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
