import pytest

from emovec import catalog


def test_catalog_has_171_emotions_in_10_families():
    emotions = catalog.emotions()
    assert len(emotions) == 171 == len(set(emotions))
    families = catalog.families()
    assert len(families) == 10
    members = [e for group in families.values() for e in group]
    assert sorted(members) == sorted(emotions)


def test_topics_are_the_studys_100():
    assert len(catalog.topics()) == 100


def test_resolve_accepts_case_and_separators():
    assert catalog.resolve("Worn_Out") == "worn out"
    assert catalog.resolve("self_confident") == "self-confident"
    assert catalog.family_of("calm") == "Peaceful Contentment"


def test_unknown_emotion_suggests_closest_names():
    with pytest.raises(catalog.UnknownEmotionError, match="happy"):
        catalog.resolve("hapy")


def test_resolve_within_a_restricted_pool_names_the_pool():
    with pytest.raises(catalog.UnknownEmotionError, match="vector file"):
        catalog.resolve("sad", valid=["happy", "calm"])
