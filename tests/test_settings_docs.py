"""Every setting is documented: a description on the settings object, its name in the README."""

from __future__ import annotations

import re
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from papersearch.settings import Settings, _section
from tests.conftest import ROOT


def _leaves(section: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, field in section.model_fields.items():
        inner = _section(field.annotation)
        if inner is None:
            yield prefix + name, field
        else:
            yield from _leaves(inner, f"{prefix}{name}.")


def test_every_setting_is_described_and_named_in_the_readme() -> None:
    """A setting users cannot find is one they cannot use: each has a description (what the
    settings object says of it) and is named in the README by its dotted name."""
    readme = (ROOT / "README.md").read_text()
    leaves = dict(_leaves(Settings))
    assert "serve.grpc_port" in leaves and "index.prf_sparse_weight" in leaves
    assert not [name for name, field in leaves.items() if not field.description]
    assert not [name for name in leaves
                if not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", readme)]
