"""In-place updates and the template index as data: which path a build takes and why, what
an update changes, the commands run in a build root, the index a host accepts, dated copies,
and digests that are the same on every host."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from vzpkg import hostvalues
from vzpkg.cache import fetch, index
from vzpkg.cache.manifest import ArchiveInfo, Manifest
from vzpkg.cache.store import CacheStore
from vzpkg.cache.update import changes, inputs_of, plan_build
from vzpkg.distro.base import Fingerprint, InstalledPackage, in_root_argv
from vzpkg.errors import VzError
from vzpkg.metadata.loader import load_catalog
from vzpkg.metadata.model import Template, base_digest
from vzpkg.pkgmgr.apt import removal_argv

REPO = Path(__file__).resolve().parents[2]
MINIMAL = "debian-12-x86_64-minimal"
DEFAULT = "debian-12-x86_64-default"
UPSTREAM = (Fingerprint("main", "http://m/dists/bookworm/InRelease", "1" * 64),)


@pytest.fixture(scope="module")
def templates() -> dict[str, Template]:
    return dict(load_catalog(REPO / "metadata").templates)


def put_cache(
    store: CacheStore,
    template: Template,
    *,
    installed: tuple[str, ...] = (),
    upstream: tuple[Fingerprint, ...] = UPSTREAM,
    inputs: dict[str, object] | None = None,
) -> None:
    store.dir.mkdir(exist_ok=True)
    store.archive_path(template.name).write_bytes(b"x" * 10)
    manifest = Manifest(
        template=template.name,
        metadata_digest=template.digest,
        family="deb",
        arch="x86_64",
        created="2026-12-01T00:00:00+00:00",
        source_date_epoch=1,
        archive=ArchiveInfo(f"{template.name}.tar.zst", "a" * 64, 10, 10, 1),
        upstream=upstream,
        packages=tuple(InstalledPackage(n, "1", "amd64") for n in installed),
        inputs=inputs_of(template) if inputs is None else inputs,
    )
    store.manifest_path(template.name).write_text(manifest.to_json())
    store.set_origin(template.name, {"sha256": "a" * 64, "source": "built"})


def no_parent(t: Template) -> Template | None:
    return None


def test_sets_that_share_a_base_share_a_base_digest(templates: dict[str, Template]) -> None:
    assert base_digest(templates[MINIMAL]) == base_digest(templates[DEFAULT])
    assert templates[MINIMAL].digest != templates[DEFAULT].digest
    other = templates["debian-11-x86_64-minimal"]
    assert base_digest(other) != base_digest(templates[MINIMAL])


def test_digests_are_the_same_wherever_the_metadata_is(tmp_path: Path) -> None:
    shutil.copytree(REPO / "metadata", tmp_path / "elsewhere")
    here = load_catalog(REPO / "metadata").templates["almalinux-9-x86_64-minimal"]
    there = load_catalog(tmp_path / "elsewhere").templates["almalinux-9-x86_64-minimal"]
    assert here.keys != there.keys  # other paths, the same files
    assert (here.digest, base_digest(here)) == (there.digest, base_digest(there))


def test_forced_and_new_caches_are_bootstrapped(
    tmp_path: Path, templates: dict[str, Template]
) -> None:
    store = CacheStore(tmp_path / "cache")
    put_cache(store, templates[MINIMAL])
    assert plan_build(templates[MINIMAL], store, UPSTREAM, no_parent, True) == (
        None,
        "-f forces a bootstrap",
    )
    plan, why = plan_build(templates[DEFAULT], store, UPSTREAM, no_parent, False)
    assert plan is None and "no cache for OS template" in why


def test_an_update_adds_drops_and_purges_what_the_metadata_says(
    tmp_path: Path, templates: dict[str, Template]
) -> None:
    t = templates[MINIMAL]
    store = CacheStore(tmp_path / "cache")
    before = {**inputs_of(t), "packages": ["procps", "gone", "never-installed"]}
    put_cache(store, t, installed=("procps", "gone"), inputs=before)
    moved = (Fingerprint("main", UPSTREAM[0].url, "2" * 64),)
    plan, why = plan_build(t, store, moved, no_parent, False)
    assert plan is not None and plan.path == "update"
    assert plan.change.upgrade
    assert plan.change.install == ("iproute2", "iputils-ping", "netbase", "less")
    assert plan.change.drop == ("gone",)  # never-installed is not there to drop
    assert why == "upstream changed; 4 package(s) added to the set; 1 package(s) dropped from it"

    excluding = replace(t, exclude=("procps",))
    plan, _ = plan_build(excluding, store, UPSTREAM, no_parent, False)
    assert plan is not None and plan.change.purge == ("procps",) and not plan.change.upgrade


def test_a_changed_base_or_an_old_manifest_is_rebuilt_and_says_why(
    tmp_path: Path, templates: dict[str, Template]
) -> None:
    t = templates[MINIMAL]
    store = CacheStore(tmp_path / "cache")
    put_cache(store, t, inputs={**inputs_of(t), "base_digest": "0" * 64})
    plan, why = plan_build(t, store, UPSTREAM, no_parent, False)
    assert plan is None and "an update cannot express" in why
    put_cache(store, t, inputs={})
    plan, why = plan_build(t, store, UPSTREAM, no_parent, False)
    assert plan is None and why == "its cache predates in-place updates"


def test_a_set_starts_from_its_base_sets_current_cache_only(
    tmp_path: Path, templates: dict[str, Template]
) -> None:
    minimal, default = templates[MINIMAL], templates[DEFAULT]
    store = CacheStore(tmp_path / "cache")

    def parent_of(t: Template) -> Template | None:
        return minimal if t is default else None

    put_cache(store, minimal, installed=("procps", "systemd-sysv"))
    plan, why = plan_build(default, store, UPSTREAM, parent_of, False)
    assert plan is not None and plan.path == "parent" and plan.start.name == MINIMAL
    assert plan.change.install == default.package_set.packages  # what default adds
    assert plan.change.purge == ("systemd-sysv",)  # default excludes it
    assert not plan.change.upgrade
    assert why.endswith(f"made from the cache of {MINIMAL}")

    moved = (Fingerprint("main", UPSTREAM[0].url, "2" * 64),)
    plan, why = plan_build(default, store, moved, parent_of, False)
    assert plan is None and why.endswith(f"the cache of its base set {MINIMAL} is not current")


def test_changes_name_versions_from_and_to() -> None:
    before = [InstalledPackage("a", "1", "amd64"), InstalledPackage("b", "1", "all")]
    after = [InstalledPackage("a", "2", "amd64"), InstalledPackage("c", "1", "amd64")]
    assert changes(before, after) == [
        {"name": "a", "arch": "amd64", "from": "1", "to": "2"},
        {"name": "b", "arch": "all", "from": "1", "to": None},
        {"name": "c", "arch": "amd64", "from": None, "to": "1"},
    ]
    assert changes(before, before) == []


def test_removals_mark_dropped_packages_automatic_and_quote_names() -> None:
    argv = removal_argv(["gone", "a;b"], [])
    assert argv[:2] == ["/bin/sh", "-ec"]
    assert "apt-mark auto gone 'a;b'" in argv[2]
    assert "autoremove --purge" in argv[2]
    assert "RecommendsImportant=false" in argv[2]
    assert "purge --auto-remove x" in removal_argv([], ["x"])[2]


def test_the_build_roots_pid_1_stays_outside_it() -> None:
    argv = in_root_argv(Path("/r"), ["apt-get", "install"], network=False)
    assert argv[:2] == ["unshare", "--net"]
    script = argv[argv.index("-c") + 1]
    assert 'chroot "$r" "$@"' in script and "exec chroot" not in script
    assert argv[-2:] == ["apt-get", "install"]
    assert "--net" not in in_root_argv(Path("/r"), ["true"])


def test_a_stalling_server_meets_a_deadline() -> None:
    import socket
    import time

    left, right = socket.socketpair()
    start = time.monotonic()
    stall = fetch._deadline(0.3, "http://slow/index.json")
    with left, right, pytest.raises(VzError, match="no answer within"), stall:
        left.recv(1)  # nothing ever comes
    assert time.monotonic() - start < 2


def test_a_key_file_without_a_key_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(VzError, match="holds no OpenPGP public key") as e:
        fetch._public_key(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\ngarbage\n", "k.asc", tmp_path)
    assert e.value.code == 10


def index_entry(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "template": MINIMAL, "file": "m.tar.zst", "size": 1, "sha256": "a" * 64,
        "manifest": "m.json", "manifest_sha256": "b" * 64,
        "created": "2026-12-03T01:00:00+00:00",
        "source_date_epoch": 1, "family": "deb", "arch": "x86_64", "upstream": [],
    }  # fmt: skip
    entry.update(overrides)
    return entry


@pytest.mark.parametrize(
    "entry",
    [
        index_entry(file="../../etc/passwd"),
        index_entry(sha256="../../../outside/evil"),
        index_entry(manifest_sha256="B" * 64),
        index_entry(template="x\n\x1b[31mfake"),
        index_entry(size=10**15),
        index_entry(source_date_epoch="1"),
        index_entry(created=1),
        index_entry(created="\x1b]0;owned\x07"),
        index_entry(created="2026-12-03T01:00:00"),  # no zone
        index_entry(source_date_epoch=10**20),
        index_entry(manifest=".hidden.json"),
        index_entry(size=-1),
        index_entry(size="1"),
        {"template": MINIMAL},
        [],
    ],
)
def test_an_index_naming_files_elsewhere_or_malformed_is_refused(
    entry: dict[str, object],
) -> None:
    data = json.dumps({"format": 1, "created": "2026-12-03T01:00:00+00:00",
                       "templates": [entry]}).encode()  # fmt: skip
    with pytest.raises(VzError, match="not a template index"):
        index.parse_index(data, "http://h/index.json", signed=True)


def test_a_good_index_parses_and_other_formats_do_not() -> None:
    data = {"format": 1, "created": "2026-12-03T01:00:00+00:00", "templates": [index_entry()]}
    parsed = index.parse_index(json.dumps(data).encode(), "http://h/v/index.json", True)
    assert parsed.entries[MINIMAL].file == "m.tar.zst"
    assert parsed.base() == "http://h/v"
    with pytest.raises(VzError):
        index.parse_index(json.dumps({**data, "format": 2}).encode(), "u", True)
    assert fetch.index_url("http://h/v") == "http://h/v/index.json"
    assert fetch.index_url("http://h/v/other.json") == "http://h/v/other.json"


def test_dated_copies_are_kept_and_pruned(tmp_path: Path, templates: dict[str, Template]) -> None:
    store = CacheStore(tmp_path / "cache")
    t = templates[MINIMAL]
    put_cache(store, t)
    manifest = Manifest(
        t.name, t.digest, "deb", "x86_64", "", 1, ArchiveInfo("f", "a" * 64, 10, 10, 1)
    )
    for day in ("01", "02", "03"):
        store.keep_dated(t.name, replace(manifest, created=f"2026-12-{day}T01:02:03+00:00"), 2)
    assert [p.name for p in store.dated(t.name)] == ["20261202T010203Z.tar.zst",
                                                     "20261203T010203Z.tar.zst"]  # fmt: skip
    assert (store.dated_dir(t.name) / "20261203T010203Z.json").is_file()
    removed = store.remove(t.name)
    assert store.dated(t.name) == [] and len(removed) == 7  # 4 dated, archive, manifest, origin


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("CACHE_KEEP_DATED", "many", "is not a number of copies"),
        ("TEMPLATE_INDEX", "ftp://x/index.json", "is not an http:// or https:// URL"),
        ("TEMPLATE_INDEX_KEYS", "key.asc", "is not an absolute path"),
        ("INDEX_GNUPGHOME", "gnupg", "is not an absolute path"),
    ],
)
def test_index_and_retention_settings_are_checked(key: str, value: str, problem: str) -> None:
    with pytest.raises(VzError, match=problem):
        hostvalues.checked({key: value}, "test.conf")
    good = hostvalues.checked(
        {"TEMPLATE_INDEX": "https://a/x http://b/", "CACHE_KEEP_DATED": "3"}, "t"
    )
    assert good["template_indexes"] == ("https://a/x", "http://b/")
    assert good["cache_keep_dated"] == 3


def test_only_a_cache_built_here_or_verified_with_trusted_keys_is_updated(
    tmp_path: Path, templates: dict[str, Template]
) -> None:
    """An update runs the cache's own apt-get as root: not that of a cache nobody vouched for,
    nor of bytes other than those the record names."""
    t = templates[MINIMAL]
    store = CacheStore(tmp_path / "cache")
    put_cache(store, t, inputs={**inputs_of(t), "packages": []})

    def path_with(origin: dict[str, object] | None, keys: str | None = "k") -> str | None:
        store.set_origin(t.name, origin)
        plan, why = plan_build(t, store, UPSTREAM, no_parent, False, keys)
        return plan.path if plan is not None else why

    fetched = {"sha256": "a" * 64, "source": "index", "index": "http://x/index.json"}
    assert path_with({"sha256": "a" * 64, "source": "built"}) == "update"
    assert path_with({**fetched, "keys": "k"}) == "update"
    assert "not verified with the keys trusted now" in str(path_with({**fetched, "keys": None}))
    assert "not verified" in str(path_with({**fetched, "keys": "k"}, keys="other"))
    assert "not verified" in str(path_with({**fetched, "keys": "k"}, keys=None))
    assert "nothing says where" in str(path_with({"sha256": "b" * 64, "source": "built"}))
    assert "nothing says where" in str(path_with(None))
