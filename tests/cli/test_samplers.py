"""``python -m diffusion samplers`` (``diffusion/cli/samplers.py``)."""

from diffusion.cli import main
from samplers import list_samplers, sampler_spec


def test_samplers_command_lists_every_registered_name(capsys):
    assert main(["samplers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_samplers()
    for line in lines:
        name, scheduler, kind = line.split()[:3]
        spec = sampler_spec(name)
        assert scheduler == spec.scheduler_class.__name__
        assert kind == ("stochastic" if spec.stochastic else "deterministic")
