"""Model families as registry entries: each names a handle class of that family, a bank for
that family, probe tasks that exist; a family with no bank is one clear error."""

from __future__ import annotations

import pytest

from robustfeat.cli import main
from robustfeat.errors import RobustfeatError
from robustfeat.evaluations.banks import bank_for_family
from robustfeat.models.families import Family
from robustfeat.registry import BANKS, DATASETS, FAMILIES


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_family_entry_is_consistent(name):
    f = FAMILIES.get(name)
    assert f.handle_class().family == name
    assert f.default_targets
    assert bank_for_family(name).family == name and f.bank in BANKS
    assert all(d in DATASETS for d, _ in f.probes)


def test_a_family_without_a_bank_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(FAMILIES._items, "audio-classifier",
                        Family("audio-classifier", "test", "robustfeat.models.vision:ImageClassifier",
                               frozenset({"image-classification"}), None))
    with pytest.raises(RobustfeatError, match="no bank is registered for audio-classifier models"):
        bank_for_family("audio-classifier")
    assert main(["ls", "families"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in FAMILIES.names()) and "TextClassifier" in out
