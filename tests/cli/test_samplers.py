"""``python -m diffusion samplers`` (``diffusion/cli/samplers.py``)."""

from diffusion.cli import main
from samplers import list_samplers, sampler_spec, samplers_for


def test_samplers_command_lists_every_registered_name(capsys):
    assert main(["samplers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_samplers()
    for line in lines:
        name, scheduler, kind = line.split()[:3]
        spec = sampler_spec(name)
        assert scheduler == spec.scheduler_class.__name__
        assert kind == ("stochastic" if spec.stochastic else "deterministic")
        assert line.split()[3] == spec.parameterisation


def test_samplers_command_lists_those_that_apply_to_a_model(capsys, tmp_path):
    from diffusers import DDPMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

    from conftest import make_pipe

    for scheduler, parameterisation in ((FlowMatchEulerDiscreteScheduler(shift=3.0), "flow"),
                                        (DDPMScheduler(prediction_type="sample"), "ddpm"),
                                        (EDMEulerScheduler(sigma_max=40.0), "edm")):
        folder = tmp_path / parameterisation
        make_pipe(scheduler=scheduler).save_pretrained(folder)
        assert main(["samplers", "--model", str(folder)]) == 0
        names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
        assert names == samplers_for(scheduler)
        assert set(names) <= set(list_samplers(parameterisation)) and names
    assert "euler-a" not in samplers_for(DDPMScheduler(prediction_type="sample"))


def test_samplers_command_refuses_a_folder_without_a_scheduler(capsys, tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="error: .*missing' is not a saved pipeline folder"):
        main(["samplers", "--model", str(tmp_path / "missing")])
    (tmp_path / "gan").mkdir()
    (tmp_path / "gan" / "model_index.json").write_text("{}")
    with pytest.raises(SystemExit, match="has no scheduler: its family takes no diffusion sampler"):
        main(["samplers", "--model", str(tmp_path / "gan")])
