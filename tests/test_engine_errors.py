"""One-line user errors from the engine's builders (found by the Defect-Gen review): a part set
to null is not built, a dataset's own value check is a ConfigError, a CUDA device without CUDA
is a ConfigError (tools print them as one ``config error:`` line)."""
import pytest
import torch
from torch.utils.data import Dataset

from defectkit.config import ConfigError
from defectkit.engine.builders import build_dataset, build_model
from defectkit.engine.runtime import resolve_device
from defectkit.registry import DATASETS


class _PickyDataset(Dataset):
    def __init__(self, size: int = 1):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def __len__(self):
        return self.size


if "_PickyDataset" not in DATASETS:
    DATASETS.register(obj=_PickyDataset)


def test_a_datasets_value_check_is_a_config_error_naming_its_type():
    assert len(build_dataset({"type": "_PickyDataset", "size": 2})) == 2
    with pytest.raises(ConfigError, match=r"dataset \(_PickyDataset\): size must be >= 1, got 0"):
        build_dataset({"type": "_PickyDataset", "size": 0})


def test_a_model_part_set_to_null_is_not_built():
    tiny = {"type": "DiffusionDenoiser", "num_defect": 1,
            "denoiser": {"type": "SinDiffusionUNet", "in_channels": 5, "model_channels": 32,
                         "channel_mult": [1], "num_res_blocks": 1, "image_size": 8}}
    model = build_model({"type": "DefectGen", "mode": "small_only", "large": None, "small": tiny,
                         "num_inference_steps": 2, "image_size": 8})
    assert model.large is None and model.small is not None
    assert model.sample(1, seed=0)[0].image.shape == (3, 8, 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_defectgen_never_reads_a_config_itself(tmp_path):
    """A model never calls load_config: a part given as a config path is built by the builder;
    given directly to the class it is a one-line TypeError saying so."""
    from defectkit.models.generation.defect_gen import DefectGen

    with pytest.raises(TypeError, match="build_model"):
        DefectGen(large="configs/defectgen/adm_large_tiny_synth.yaml", mode="large_only")
