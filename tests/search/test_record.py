"""sweep.json read back as the typed record a resumed sweep is built from."""

import json

import pytest

from dpsearch.config import ConfigError
from dpsearch.search.options import SweepOptions
from dpsearch.search.record import SweepRecord
from dpsearch.storage import Store


def test_the_record_round_trips_and_reads_a_file_with_keys_it_does_not_know(tmp_path):
    meta = Store(str(tmp_path)).child("s1", "dpsearch")
    rec = SweepRecord(options=SweepOptions(eps=1.5, eps_total=5, name="s1", trials=3), space={"name": "mnist"},
                      design="slices", n_private=60000, delta=1.5e-6, fingerprints={"salt": "ab"},
                      slices={"planned": {"tuning": 6000}})
    rec.save(meta)
    raw = json.loads(meta.read_text("sweep.json"))
    assert raw["options"]["eps_total"] == 5 and raw["design"] == "slices" and raw["elapsed_s"] == 0.0
    raw["written_by_a_later_version"] = 1
    raw["options"]["a_later_option"] = True
    meta.write_text("sweep.json", json.dumps(raw))
    back = SweepRecord.load(meta, "s1", str(tmp_path))
    assert back == rec and back.name == "s1" and isinstance(back.options, SweepOptions)


def test_a_missing_sweep_is_named_with_where_it_was_looked_for(tmp_path):
    with pytest.raises(ConfigError, match=r"no sweep named 'nope' under .*sweep\.json"):
        SweepRecord.load(Store(str(tmp_path)).child("nope", "dpsearch"), "nope", str(tmp_path))



def test_a_sweep_recorded_before_a_space_field_existed_resumes_and_a_changed_field_still_refuses():
    import json

    from dpsearch.search.sweep import space_json
    from dpsearch.space import SearchSpace, load_space

    space = load_space("mnist")
    recorded = json.loads(space.model_dump_json())
    assert space_json(space, recorded) == space.model_dump_json()  # nothing added since: the plain fingerprint
    older = json.loads(space.model_dump_json())
    del older["slices"]["min_validation"], older["validation"]["reference_margin"]  # as an older dpsearch wrote it
    again = SearchSpace(**older)  # read back: the new fields take their defaults
    assert space_json(again, older) == space.model_dump_json(
        exclude={"slices": {"min_validation"}, "validation": {"reference_margin"}})
    changed = SearchSpace(**{**older, "eps": 7.0})
    assert space_json(changed, older) != space_json(again, older)

