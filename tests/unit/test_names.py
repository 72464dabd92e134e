"""What users type (``debian-12``, ``debian-bookworm-amd64-minimal``) becomes a canonical
template name; an unknown name is an error whose hint lists the likeliest intended names."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from vzpkg.errors import ExitCode, VzError
from vzpkg.metadata.loader import Catalog, load_catalog
from vzpkg.metadata.names import canonical_name

METADATA = Path(__file__).resolve().parents[2] / "metadata"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(METADATA)


@pytest.mark.parametrize(
    ("typed", "arch", "expected"),
    [
        ("debian-12", "x86_64", "debian-12-x86_64-default"),
        ("debian-12-minimal", "x86_64", "debian-12-x86_64-minimal"),
        ("debian-bookworm-amd64-minimal", "x86_64", "debian-12-x86_64-minimal"),
        ("debian-12-arm64-minimal", "x86_64", "debian-12-aarch64-minimal"),
        ("debian-12-x86-64-minimal", "aarch64", "debian-12-x86_64-minimal"),
        ("debian-bookworm", "amd64", "debian-12-x86_64-default"),
        ("debian-12", "aarch64", "debian-12-aarch64-default"),
        ("Debian-12-Minimal", "x86_64", "debian-12-x86_64-minimal"),
        ("ubuntu-jammy", "x86_64", "ubuntu-22.04-x86_64-default"),
    ],
)
def test_short_names_resolve(catalog: Catalog, typed: str, arch: str, expected: str) -> None:
    assert canonical_name(typed, catalog, arch=arch) == expected


def test_exact_names_pass_through_whatever_the_arch(catalog: Catalog) -> None:
    for name in ("debian-12-i386-minimal", "debian-13-aarch64-default"):
        assert canonical_name(name, catalog, arch="x86_64") == name


def test_without_arch_the_host_arch_is_used(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert canonical_name("debian-12", catalog) == "debian-12-aarch64-default"


def not_found(name: str, catalog: Catalog, arch: str = "x86_64") -> VzError:
    with pytest.raises(VzError) as raised:
        canonical_name(name, catalog, arch=arch)
    assert raised.value.code == ExitCode.TEMPLATE_NOT_FOUND
    assert repr(name) in raised.value.message
    return raised.value


def suggestions(error: VzError) -> list[str]:
    assert error.hint is not None and error.hint.startswith("did you mean: "), error.hint
    return error.hint.removeprefix("did you mean: ").split(", ")


def test_typo_suggests_requested_arch_and_default_set_first(catalog: Catalog) -> None:
    near = suggestions(not_found("debain-12", catalog))
    assert near[0] == "debian-12-x86_64-default"
    assert all("-i386-" not in n and "-aarch64-" not in n for n in near)


def test_typo_follows_the_requested_arch(catalog: Catalog) -> None:
    near = suggestions(not_found("debain-12", catalog, arch="aarch64"))
    assert near[0] == "debian-12-aarch64-default"


def test_typo_in_set_suggests_that_set(catalog: Catalog) -> None:
    near = suggestions(not_found("debian-12-minimla", catalog))
    assert near[0] == "debian-12-x86_64-minimal"


def test_arch_without_templates_suggests_same_release_and_set(catalog: Catalog) -> None:
    near = suggestions(not_found("debian-12-riscv64-minimal", catalog))
    assert all(n.startswith("debian-") and n.endswith("-minimal") for n in near)
    assert "debian-12-aarch64-minimal" in near


def test_unknown_release_suggests_other_releases(catalog: Catalog) -> None:
    near = suggestions(not_found("debian-99", catalog))
    assert "debian-12-x86_64-default" in near


def test_nothing_close_points_to_vzpkgls(catalog: Catalog) -> None:
    error = not_found("slackware-15", catalog)
    assert error.hint == "vzpkgls lists the known templates"
