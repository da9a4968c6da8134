import numpy as np
from PIL import Image

from dpsearch.config import SampleConfig
from dpsearch.models import load_ldm
from dpsearch.sample import sample, save_grid


def test_sampling_gives_balanced_labelled_images_and_a_grid(tiny_model_dir, tmp_path):
    m = load_ldm(tiny_model_dir)
    s = sample(m, SampleConfig(per_class=3, ddim_steps=4, batch=16), progress=False)
    assert len(s) == 30 and s.class_counts() == [3] * 10 and s.image_shape == (1, 28, 28)
    assert s.images.float().std() > 0
    again = sample(m, SampleConfig(per_class=3, ddim_steps=4, batch=16), progress=False)
    assert (again.images == s.images).all()  # seeded
    grid = Image.open(save_grid(s, tmp_path / "g.png", per_class=3, scale=1))
    assert grid.size == (3 * 28, 10 * 28)
    assert np.asarray(grid)[:28, :28].tolist() == s.images[0, 0].tolist()
