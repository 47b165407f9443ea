"""``python -m diffusion samplers`` (``diffusion/cli/samplers.py``)."""

from diffusion.cli import main
from samplers import list_samplers, sampler_spec, samplers_for


def test_samplers_command_lists_every_registered_name(capsys):
    assert main(["samplers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_samplers(distilled=None)
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


def test_a_distilled_student_lists_its_consistency_sampler_and_generates_with_its_defaults(
        capsys, tmp_path):
    """A student (its saved scheduler lcm) lists lcm beside the DDPM samplers, and ``generate``
    without --steps / --guidance-scale runs lcm at 4 steps, guidance 1 (4 forwards)."""
    from diffusers import DDPMScheduler

    from conftest import make_pipe
    from samplers import build_sampler

    folder = tmp_path / "student"
    make_pipe(scheduler=build_sampler("lcm", DDPMScheduler(prediction_type="v_prediction"))) \
        .save_pretrained(folder)
    assert main(["samplers", "--model", str(folder)]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "lcm" in names and "ddim" in names and "flow-lcm" not in names
    assert main(["generate", "--model", str(folder), "--classes", "0,1", "--per-class", "1",
                 "--out", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "sampler=lcm steps=4 NFE=4" in out and "guidance_scale=1.0" in out, out
