"""Template metadata: the shipped tree loads and says what OpenVZ users expect; a broken tree is
reported in full, every problem with its file and key, in one error."""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.errors import ExitCode, VzError
from vzpkg.metadata.loader import Catalog, load_catalog

METADATA = Path(__file__).resolve().parents[2] / "metadata"
SYSLOG_DAEMONS = {"inetutils-syslogd", "rsyslog", "syslog-ng", "busybox-syslogd", "sysklogd"}


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


DIST = """\
summary = "Test OS"
family = "deb"
arches = ["x86_64"]
keys = ["keys/test.gpg"]
[mirrors.main]
url = "http://mirror.invalid/test"
"""
RELEASE = """\
version = "1"
codename = "one"
summary = "Test 1"
[[repositories]]
id = "main"
mirror = "main"
suite = "one"
components = ["main"]
"""


def valid_tree(root: Path) -> Path:
    """A small, correct deb distribution 'testos' with a post-install hook in its default set."""
    write(root, "testos/distribution.toml", DIST)
    write(root, "testos/keys/test.gpg", "not really a keyring")
    write(root, "testos/releases/1.toml", RELEASE)
    write(root, "testos/sets/minimal.toml", 'summary = "minimal"\npackages = ["procps"]\n')
    write(
        root,
        "testos/sets/default.toml",
        'summary = "default"\nbase = "minimal"\npackages = ["cron"]\n'
        '[hooks]\npost-install = ["../hooks/setup.sh"]\n',
    )
    write(root, "testos/hooks/setup.sh", "echo one\n")
    return root


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(METADATA)


def test_shipped_metadata_loads_debian_12(catalog: Catalog) -> None:
    minimal = catalog.get("debian-12-x86_64-minimal")
    assert minimal.family == "deb"
    assert minimal.release.codename == "bookworm"
    assert minimal.variant == "minbase"
    assert [r.id for r in minimal.release.repositories] == ["main", "updates", "security"]
    assert {"procps", "iproute2", "iputils-ping"} <= set(minimal.packages)
    assert minimal.keys, "a deb template must verify signatures against a keyring"
    assert len(minimal.digest) == 64


def test_debian_default_extends_minimal_as_a_classic_openvz_server(catalog: Catalog) -> None:
    minimal = catalog.get("debian-12-x86_64-minimal")
    default = catalog.get("debian-12-x86_64-default")
    assert default.package_set.base == "minimal"
    assert set(minimal.packages) <= set(default.packages)
    assert {"sysvinit-core", "openssh-server", "cron"} <= set(default.packages)
    assert set(default.packages) & SYSLOG_DAEMONS
    assert "systemd-sysv" in default.exclude
    assert "systemd-sysv" not in default.packages
    assert default.digest != minimal.digest


def test_every_debian_release_is_combined_with_every_set_and_arch(catalog: Catalog) -> None:
    debian = catalog.distributions["debian"]
    for release in catalog.releases["debian"]:
        for arch in release.arches or debian.arches:
            for set_name in catalog.sets["debian"]:
                name = f"debian-{release.version}-{arch}-{set_name}"
                assert catalog.templates[name].arch == arch


def test_unknown_template_is_template_not_found(catalog: Catalog) -> None:
    with pytest.raises(VzError) as raised:
        catalog.get("debian-99-x86_64-minimal")
    assert raised.value.code == ExitCode.TEMPLATE_NOT_FOUND


def test_valid_temp_tree_resolves_base_set_and_hooks(tmp_path: Path) -> None:
    catalog = load_catalog(valid_tree(tmp_path))
    assert sorted(catalog.templates) == ["testos-1-x86_64-default", "testos-1-x86_64-minimal"]
    default = catalog.get("testos-1-x86_64-default")
    assert default.packages == ("procps", "cron")
    assert default.hooks.post_install == (tmp_path / "testos/sets/../hooks/setup.sh",)
    assert default.keys == (tmp_path / "testos/keys/test.gpg",)


def broken_tree(root: Path) -> dict[str, Path]:
    """Two distributions with one deliberate mistake of each kind; returns the files."""
    files = {
        "alpha": write(
            root,
            "alpha/distribution.toml",
            'family = "deb"\n'  # no summary
            'colour = "blue"\n'  # unknown key
            'arches = ["x86_64", "sparc"]\n'  # bad arch
            'keys = ["keys/missing.gpg"]\n'  # missing relative key file
            '[mirrors.main]\nurl = "http://mirror.invalid/alpha"\n',
        ),
        "alpha_1": write(
            root,
            "alpha/releases/1.toml",
            RELEASE.replace('mirror = "main"', 'mirror = "nowhere"'),  # undefined mirror
        ),
        "alpha_1_again": write(root, "alpha/releases/1b.toml", RELEASE),  # duplicate version
        "alpha_2": write(root, "alpha/releases/2.toml", 'version = "2\n'),  # invalid TOML
        "default": write(root, "alpha/sets/default.toml", 'summary = "d"\npackages = ["a"]\n'),
        "empty": write(root, "alpha/sets/empty.toml", 'summary = "no packages"\n'),
        "loop_a": write(root, "alpha/sets/loop_a.toml", 'summary = "a"\nbase = "loop_b"\n'),
        "loop_b": write(root, "alpha/sets/loop_b.toml", 'summary = "b"\nbase = "loop_a"\n'),
        "only9": write(
            root, "alpha/sets/only9.toml", 'summary = "o"\npackages = ["a"]\nreleases = ["9"]\n'
        ),
        "beta": write(root, "beta/distribution.toml", DIST.replace('family = "deb"\n', "")),
        "beta_1": write(
            root, "beta/releases/1.toml", RELEASE.replace('version = "1"\n', "")
        ),  # no version
        "beta_set": write(
            root,
            "beta/sets/default.toml",
            'packages = ["a"]\n'  # no summary
            '[[repositories]]\nid = "x"\n',  # a release key in a set file
        ),
    }
    write(root, "beta/keys/test.gpg", "key")
    return files


def test_broken_tree_reports_every_problem_at_once(tmp_path: Path) -> None:
    files = broken_tree(tmp_path)
    with pytest.raises(VzError) as raised:
        load_catalog(tmp_path)
    error = raised.value
    assert error.code == ExitCode.METADATA_INVALID
    expected = [
        f"{files['alpha']}: colour: unknown key",
        f"{files['alpha']}: summary: missing",
        f"{files['alpha']}: arches: unknown arch 'sparc'",
        f"{files['alpha']}: keys: keys/missing.gpg: no such file",
        f"{files['alpha_1']}: repositories[0].mirror: must name a mirror",
        f"{tmp_path / 'alpha/releases'}: version: '1' is defined more than once",
        "template name alpha-1-x86_64-default is defined twice",
        f"{files['alpha_2']}: not valid TOML",
        f"{files['empty']}: packages: a set needs packages",
        f"{files['loop_a']}: base: base sets form a cycle: loop_a -> loop_b -> loop_a",
        f"{files['loop_b']}: base: base sets form a cycle: loop_b -> loop_a -> loop_b",
        f"{files['only9']}: releases: no release '9' in alpha",
        f"{files['beta']}: family: missing",
        f"{files['beta_1']}: version: missing",
        f"{files['beta_set']}: summary: missing",
        f"{files['beta_set']}: repositories: unknown key",
    ]
    missing = [text for text in expected if text not in error.message]
    assert not missing, error.message
    lines = error.message.splitlines()[1:]
    assert len(lines) == len(set(lines)), "a problem is reported once, not once per release"
    assert error.message.startswith(f"template metadata is invalid ({len(lines)} problems)")


def test_one_problem_is_singular_and_names_file_and_key(tmp_path: Path) -> None:
    valid_tree(tmp_path)
    release = write(tmp_path, "testos/releases/1.toml", 'arches = ["vax"]\n' + RELEASE)
    with pytest.raises(VzError) as raised:
        load_catalog(tmp_path)
    assert raised.value.message == (
        "template metadata is invalid (1 problem):\n"
        f"  {release}: arches: unknown arch 'vax' "
        "(known: aarch64, i386, ppc64le, riscv64, s390x, x86_64)"
    )


def test_empty_arch_list_is_a_problem(tmp_path: Path) -> None:
    valid_tree(tmp_path)
    dist = write(tmp_path, "testos/distribution.toml", DIST.replace('["x86_64"]', "[]"))
    with pytest.raises(VzError) as raised:
        load_catalog(tmp_path)
    assert f"{dist}: arches: must name at least one arch" in raised.value.message


def test_missing_metadata_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(VzError) as raised:
        load_catalog(tmp_path / "nonexistent")
    assert raised.value.code == ExitCode.CONFIG


def test_digest_follows_hook_content(tmp_path: Path) -> None:
    valid_tree(tmp_path)
    first = load_catalog(tmp_path).templates
    again = load_catalog(tmp_path).templates
    assert {n: t.digest for n, t in first.items()} == {n: t.digest for n, t in again.items()}

    (tmp_path / "testos/hooks/setup.sh").write_text("echo two\n")
    changed = load_catalog(tmp_path).templates
    assert changed["testos-1-x86_64-default"].digest != first["testos-1-x86_64-default"].digest
    # The minimal set does not run the hook: its digest must not move.
    assert changed["testos-1-x86_64-minimal"].digest == first["testos-1-x86_64-minimal"].digest


def test_digest_follows_key_content_and_packages(tmp_path: Path) -> None:
    valid_tree(tmp_path)
    before = load_catalog(tmp_path).get("testos-1-x86_64-minimal").digest
    (tmp_path / "testos/keys/test.gpg").write_text("another keyring")
    after_key = load_catalog(tmp_path).get("testos-1-x86_64-minimal").digest
    write(tmp_path, "testos/sets/minimal.toml", 'summary = "minimal"\npackages = ["less"]\n')
    after_packages = load_catalog(tmp_path).get("testos-1-x86_64-minimal").digest
    assert len({before, after_key, after_packages}) == 3
