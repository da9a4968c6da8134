"""What a sweep trial reports beyond its metrics: its timing (whole minutes only) and its sweep."""

from dpsearch.search.trainable import total_minutes


def test_a_trial_releases_its_wall_time_in_whole_minutes_rounded_up():
    assert [total_minutes(s) for s in (0.4, 59.9, 60.0, 60.01, 412.7)] == [1, 1, 1, 2, 7]
