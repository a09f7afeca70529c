"""fundus2video.devices: the one parser of device strings (the CLI's refusals are in test_generate)."""

import pytest
import torch

from fundus2video.devices import check_device, default_device, device_type
from fundus2video.errors import UserError


@pytest.mark.parametrize("text, expected", [("cpu", "cpu"), ("cpu:0", "cpu"), ("cuda:3", "cuda"), ("mps", "mps")])
def test_device_type_is_the_kind_autocast_takes(text, expected):
    assert device_type(text) == expected == device_type(torch.device(text))
    assert device_type("tpu:1") == "tpu"  # not torch's: left for check_device to refuse


def test_the_cpu_with_an_index_is_the_cpu_map_location_knows():
    assert check_device("cpu:0") == torch.device("cpu") and str(check_device(torch.device("cpu"))) == "cpu"


@pytest.mark.parametrize("text, message", [
    ("tpu", "--device tpu: not a device (expected cpu, cuda, cuda:N or mps)"),
    ("", "--device : not a device"),
    ("meta", "--device meta: not supported (expected cpu, cuda, cuda:N or mps)"),
])
def test_what_is_not_a_device_here_is_one_line_naming_the_flag(text, message):
    with pytest.raises(UserError) as err:
        check_device(text, "--device")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_the_machine_lacks_is_refused_and_the_default_is_the_cpu():
    with pytest.raises(UserError, match="--device cuda:1: this machine has no CUDA GPU"):
        check_device("cuda:1", "--device")
    assert default_device() == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_index_beyond_the_count_is_refused():
    count = torch.cuda.device_count()
    with pytest.raises(UserError, match=f"this machine has {count} CUDA GPU"):
        check_device(f"cuda:{count}", "--device")
    assert check_device("cuda:0") == torch.device("cuda:0") and default_device() == "cuda"
