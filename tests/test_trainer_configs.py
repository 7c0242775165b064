"""The `accelerate launch` config files in docker/trainer, read by accelerate's own code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "docker" / "trainer"
CLAIMS = {  # file: (distributed type, processes, machines)
    "cpu.yaml": (DistributedType.NO, 1, 1),
    "single-gpu.yaml": (DistributedType.NO, 1, 1),
    "multi-gpu.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "deepspeed-zero2.yaml": (DistributedType.DEEPSPEED, 8, 1),
    "deepspeed-zero3.yaml": (DistributedType.DEEPSPEED, 8, 1),
    "fsdp.yaml": (DistributedType.FSDP, 8, 1),
    "multi-node.yaml": (DistributedType.MULTI_GPU, 16, 2),
}


def test_every_file_is_claimed_and_documented():
    assert {p.name for p in FOLDER.glob("*.yaml")} == set(CLAIMS)
    readme = (FOLDER / "README.md").read_text()
    for name in CLAIMS:
        assert f"docker/trainer/{name}" in readme


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_each_file_loads_through_accelerate_with_the_distributed_type_it_claims(name):
    config = load_config_from_file(str(FOLDER / name))  # refuses unknown top-level keys
    assert isinstance(config, ClusterConfig)
    kind, processes, machines = CLAIMS[name]
    assert (config.distributed_type, config.num_processes, config.num_machines) == (kind, processes, machines)
    assert config.use_cpu == (name == "cpu.yaml")


def launch_arguments(name: str):
    """What `accelerate launch --config_file FILE -m tuneloop train` resolves, as accelerate does it."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(FOLDER / name), "-m", "tuneloop", "train"])
    return parser, _validate_launch_command(args)[0]


@pytest.mark.parametrize("name", ["deepspeed-zero2.yaml", "deepspeed-zero3.yaml", "fsdp.yaml"])
def test_deepspeed_and_fsdp_sections_use_only_keys_and_values_accelerate_knows(name):
    config = load_config_from_file(str(FOLDER / name))
    section = config.deepspeed_config or config.fsdp_config
    prefix = "fsdp_" if config.fsdp_config else ""
    parser, resolved = launch_arguments(name)
    actions = {action.dest: action for action in parser._actions}
    for key, value in section.items():
        dest = key if key.startswith(prefix) else prefix + key
        assert dest in actions, f"{name}: {key} is not an accelerate launch setting"
        if actions[dest].choices:
            assert str(value) in actions[dest].choices, f"{name}: {key}={value}"
        assert str(getattr(resolved, dest)).lower() == str(value).lower()  # the file's value reaches the launch


def test_the_launcher_resolves_each_file_to_its_backend():
    assert launch_arguments("deepspeed-zero2.yaml")[1].use_deepspeed
    assert launch_arguments("deepspeed-zero2.yaml")[1].zero_stage == 2
    assert launch_arguments("deepspeed-zero3.yaml")[1].zero_stage == 3
    fsdp = launch_arguments("fsdp.yaml")[1]
    assert fsdp.use_fsdp and str(fsdp.fsdp_version) == "2"  # FSDP2
    assert launch_arguments("multi-gpu.yaml")[1].multi_gpu
    node = launch_arguments("multi-node.yaml")[1]
    assert node.multi_gpu and node.num_machines == 2 and node.main_process_ip and node.main_process_port
    cpu = launch_arguments("cpu.yaml")[1]
    assert not (cpu.multi_gpu or cpu.use_deepspeed or cpu.use_fsdp) and cpu.module


def test_python_dash_m_tuneloop_is_the_command():
    done = subprocess.run([sys.executable, "-m", "tuneloop", "--help"], check=False, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage: tuneloop" in done.stdout and "train" in done.stdout and "tune" in done.stdout
