import numpy as np
from PIL import Image

from dpsearch.config import SampleConfig
from dpsearch.models import load_ldm
from dpsearch.sample import sample, save_grid


def test_sampling_gives_balanced_labelled_images_and_a_grid(tiny_model_dir, tmp_path):
    m = load_ldm(tiny_model_dir)
    s = sample(m, SampleConfig(per_class=3, steps=4, batch=16), progress=False)
    assert len(s) == 30 and s.class_counts() == [3] * 10 and s.image_shape == (1, 28, 28)
    assert s.images.float().std() > 0
    again = sample(m, SampleConfig(per_class=3, steps=4, batch=16), progress=False)
    assert (again.images == s.images).all()  # seeded
    grid = Image.open(save_grid(s, tmp_path / "g.png", per_class=3, scale=1))
    assert grid.size == (3 * 28, 10 * 28)
    assert np.asarray(grid)[:28, :28].tolist() == s.images[0, 0].tolist()


def test_dpm_solver_sampling_calls_the_unet_once_per_step_and_is_seeded(tiny_model_dir):
    m = load_ldm(tiny_model_dir)
    calls = []
    hook = m.unet.register_forward_hook(lambda *_: calls.append(1))
    cfg = SampleConfig(per_class=2, steps=3, scheduler="dpm++", batch=8)
    s = sample(m, cfg, progress=False)
    hook.remove()
    assert len(calls) == 3 * 3  # three batches (8, 8, 4), three UNet calls each; the solver restarts per batch
    assert s.class_counts() == [2] * 10 and s.images.float().std() > 0
    assert (sample(m, cfg, progress=False).images == s.images).all()
    ddim = sample(m, cfg.model_copy(update={"scheduler": "ddim"}), progress=False)
    assert not (ddim.images == s.images).all()  # the scheduler setting is really used


def test_spaces_and_sweeps_written_with_the_old_ddim_steps_name_still_load():
    assert SampleConfig(ddim_steps=7).steps == 7 and SampleConfig(steps=5).steps == 5
