"""Load and validate template metadata. Every problem is collected, then reported at once.

Layout (docs/metadata.md)::

    <metadata>/<os>/distribution.toml    what the OS is: family, tools, arches, keys, mirrors
    <metadata>/<os>/releases/<v>.toml    one release: version, repositories
    <metadata>/<os>/sets/<set>.toml      one package set: packages to add and to exclude
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vzpkg.errors import ExitCode, VzError
from vzpkg.metadata.model import (
    ARCH_ALIASES,
    BOOTSTRAP_TOOLS,
    FAMILIES,
    HOOK_NAMES,
    PACKAGE_MANAGERS,
    Distribution,
    Hooks,
    Mirror,
    PackageSet,
    Release,
    Repository,
    Template,
    template_digest,
)

NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")
VERSION_RE = re.compile(r"^[0-9][0-9a-z.]*$")
SET_RE = re.compile(r"^[a-z][a-z0-9_]*$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DIST_KEYS = {
    "summary",
    "description",
    "family",
    "package_manager",
    "bootstrap",
    "arches",
    "default_set",
    "keys",
    "environment",
    "hooks",
    "mirrors",
}
RELEASE_KEYS = {
    "version",
    "codename",
    "summary",
    "keys",
    "arches",
    "releasever",
    "repositories",
    "sets",
    "environment",
    "hooks",
}
SET_KEYS = {
    "summary",
    "description",
    "packages",
    "exclude",
    "base",
    "variant",
    "releases",
    "environment",
    "hooks",
}
REPO_KEYS = {
    "id",
    "mirror",
    "suite",
    "components",
    "baseurl",
    "metalink",
    "mirrorlist",
    "gpgkeys",
    "repo_gpgcheck",
    "enabled",
}
MIRROR_KEYS = {"url", "host_suite"}


class Problems:
    """Collects validation problems as 'file: key: message'."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: Path, key: str | None, message: str) -> None:
        item = f"{path}: {key}: {message}" if key else f"{path}: {message}"
        # A set is resolved once per release, so the same base-set problem comes up repeatedly.
        if item not in self.items:
            self.items.append(item)

    def raise_if_any(self) -> None:
        if self.items:
            count = len(self.items)
            raise VzError(
                f"template metadata is invalid ({count} problem"
                f"{'s' if count > 1 else ''}):\n  " + "\n  ".join(self.items),
                ExitCode.METADATA_INVALID,
            )


class _Table:
    """Typed access to one TOML table, recording problems instead of raising."""

    def __init__(self, data: Mapping[str, Any], path: Path, problems: Problems, prefix: str = ""):
        self.data, self.path, self.problems, self.prefix = data, path, problems, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def check_keys(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for name in self.data:
            if name not in allowed:
                near = ", ".join(sorted(allowed))
                self.problems.add(self.path, self.key(name), f"unknown key (known: {near})")

    def string(
        self,
        name: str,
        default: str | None = None,
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
    ) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problems.add(self.path, self.key(name), "missing")
            return default
        if not isinstance(value, str) or not value:
            self.problems.add(self.path, self.key(name), "must be a non-empty string")
            return default
        if pattern is not None and not pattern.match(value):
            self.problems.add(self.path, self.key(name), f"invalid value {value!r}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            self.problems.add(self.path, self.key(name), "must be true or false")
            return default
        return value

    def strs(self, name: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problems.add(self.path, self.key(name), "missing")
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problems.add(self.path, self.key(name), "must be a list of non-empty strings")
            return ()
        return tuple(value)

    def table(self, name: str) -> _Table | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problems.add(self.path, self.key(name), "must be a table")
            return None
        return _Table(value, self.path, self.problems, f"{self.prefix}{name}.")

    def tables(self, name: str) -> list[_Table]:
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.problems.add(self.path, self.key(name), "must be an array of tables ([[...]])")
            return []
        return [
            _Table(v, self.path, self.problems, f"{self.prefix}{name}[{i}].")
            for i, v in enumerate(value)
        ]

    def files(self, name: str) -> tuple[Path, ...]:
        """Paths relative to the file's directory (absolute paths are host files)."""
        result = []
        for entry in self.strs(name):
            path = Path(entry) if entry.startswith("/") else self.path.parent / entry
            if not entry.startswith("/") and not path.is_file():
                self.problems.add(self.path, self.key(name), f"{entry}: no such file")
            result.append(path)
        return tuple(result)

    def environment(self) -> dict[str, str]:
        env = self.table("environment")
        if env is None:
            return {}
        result = {}
        for key, value in env.data.items():
            if not ENV_RE.match(key) or not isinstance(value, str):
                self.problems.add(self.path, env.key(key), 'must be NAME = "string"')
            else:
                result[key] = value
        return result

    def hooks(self) -> Hooks:
        table = self.table("hooks")
        if table is None:
            return Hooks()
        table.check_keys(HOOK_NAMES)
        return Hooks(
            table.files("pre-cache"), table.files("post-install"), table.files("post-cache")
        )

    def arches(self, name: str) -> tuple[str, ...]:
        result = []
        known = ", ".join(sorted(set(ARCH_ALIASES.values())))
        for arch in self.strs(name):
            if arch not in ARCH_ALIASES:
                self.problems.add(
                    self.path, self.key(name), f"unknown arch {arch!r} (known: {known})"
                )
            else:
                result.append(ARCH_ALIASES[arch])
        return tuple(result)


def _read_toml(path: Path, problems: Problems) -> _Table | None:
    try:
        with path.open("rb") as f:
            return _Table(tomllib.load(f), path, problems)
    except tomllib.TOMLDecodeError as e:
        problems.add(path, None, f"not valid TOML: {e}")
    except UnicodeDecodeError as e:
        problems.add(path, None, f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at {e.start})")
    except OSError as e:
        problems.add(path, None, f"cannot read: {e.strerror}")
    return None


def _load_distribution(directory: Path, problems: Problems) -> Distribution | None:
    path = directory / "distribution.toml"
    t = _read_toml(path, problems)
    if t is None:
        return None
    t.check_keys(DIST_KEYS)
    name = directory.name
    if not NAME_RE.match(name):
        problems.add(
            directory, None, "distribution directory names are lowercase letters and digits"
        )
    family = t.string("family", "deb", required=True) or "deb"
    if family not in FAMILIES:
        problems.add(path, "family", f"must be one of {', '.join(FAMILIES)}")
        family = "deb"
    pm = t.string("package_manager", PACKAGE_MANAGERS[family][0]) or PACKAGE_MANAGERS[family][0]
    if pm not in PACKAGE_MANAGERS[family]:
        problems.add(
            path,
            "package_manager",
            f"{pm!r} does not drive the {family} family (use {PACKAGE_MANAGERS[family][0]})",
        )
    arches = t.arches("arches")
    if "arches" not in t.data:
        problems.add(path, "arches", "missing")
    elif t.data["arches"] == []:
        problems.add(path, "arches", "must name at least one arch")
    bootstrap = t.strs("bootstrap") or BOOTSTRAP_TOOLS[family]
    for tool in bootstrap:
        if tool not in BOOTSTRAP_TOOLS[family]:
            problems.add(
                path,
                "bootstrap",
                f"{tool!r} cannot bootstrap the {family} family "
                f"(known: {', '.join(BOOTSTRAP_TOOLS[family])})",
            )
    mirrors: dict[str, Mirror] = {}
    mirror_table = t.table("mirrors")
    if mirror_table is not None:
        for mname in mirror_table.data:
            m = mirror_table.table(mname)
            if m is None:
                continue
            m.check_keys(MIRROR_KEYS)
            mirrors[mname] = Mirror(mname, m.string("url"), m.string("host_suite"))
            if mirrors[mname].url is None and mirrors[mname].host_suite is None:
                problems.add(path, m.key(""), "a mirror needs url or host_suite")
    keys = t.files("keys")
    if family == "deb" and not keys:
        problems.add(path, "keys", "a deb distribution needs a keyring (fail-closed signatures)")
    return Distribution(
        name=name,
        summary=t.string("summary", name, required=True) or name,
        family=family,
        package_manager=pm,
        bootstrap=bootstrap,
        arches=arches,
        default_set=t.string("default_set", "default", pattern=SET_RE) or "default",
        keys=keys,
        mirrors=mirrors,
        environment=t.environment(),
        hooks=t.hooks(),
        description=t.string("description", "") or "",
        path=path,
    )


def _load_release(path: Path, dist: Distribution, problems: Problems) -> Release | None:
    t = _read_toml(path, problems)
    if t is None:
        return None
    t.check_keys(RELEASE_KEYS)
    version = t.string("version", required=True, pattern=VERSION_RE)
    repos = []
    for r in t.tables("repositories"):
        r.check_keys(REPO_KEYS)
        repo = Repository(
            id=r.string("id", required=True, pattern=ID_RE) or "?",
            mirror=r.string("mirror"),
            suite=r.string("suite"),
            components=r.strs("components"),
            baseurl=r.string("baseurl"),
            metalink=r.string("metalink"),
            mirrorlist=r.string("mirrorlist"),
            gpgkeys=r.files("gpgkeys"),
            repo_gpgcheck=r.boolean("repo_gpgcheck", False),
            enabled=r.boolean("enabled", True),
        )
        if dist.family == "deb":
            if repo.suite is None:
                problems.add(path, r.key("suite"), "missing (deb repositories name a suite)")
            if not repo.components:
                problems.add(path, r.key("components"), "missing")
            if repo.mirror is None or repo.mirror not in dist.mirrors:
                problems.add(
                    path,
                    r.key("mirror"),
                    f"must name a mirror of {dist.path} "
                    f"({', '.join(sorted(dist.mirrors)) or 'none defined'})",
                )
        elif repo.mirror is not None:
            # rpm: baseurl is then a path below the mirror, which hosts can point elsewhere.
            if repo.mirror not in dist.mirrors:
                problems.add(path, r.key("mirror"), f"no mirror {repo.mirror!r} in {dist.path}")
            if repo.metalink or repo.mirrorlist:
                problems.add(path, r.key("mirror"), "a mirror goes with baseurl, not metalink")
        elif not (repo.baseurl or repo.metalink or repo.mirrorlist):
            problems.add(
                path, r.key("baseurl"), "rpm repositories need baseurl, metalink or mirrorlist"
            )
        repos.append(repo)
    if not repos:
        problems.add(path, "repositories", "missing (at least one [[repositories]])")
    ids = [r.id for r in repos]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.add(path, "repositories", f"duplicate id {dup!r}")
    set_packages: dict[str, tuple[str, ...]] = {}
    sets = t.table("sets")
    if sets is not None:
        for sname in sets.data:
            st = sets.table(sname)
            if st is not None:
                st.check_keys({"packages"})
                set_packages[sname] = st.strs("packages")
    codename = t.string("codename")
    if dist.family == "deb" and codename is None:
        problems.add(path, "codename", "missing (deb releases have a codename)")
    return Release(
        version=version or "?",
        summary=t.string("summary", required=True) or "",
        codename=codename,
        repositories=tuple(repos),
        keys=t.files("keys"),
        arches=t.arches("arches"),
        releasever=t.string("releasever"),
        set_packages=set_packages,
        environment=t.environment(),
        hooks=t.hooks(),
        path=path,
    )


def _load_set(path: Path, problems: Problems) -> PackageSet | None:
    t = _read_toml(path, problems)
    if t is None:
        return None
    t.check_keys(SET_KEYS)
    name = path.stem
    if not SET_RE.match(name):
        problems.add(path, None, "set file names are lowercase letters, digits and _")
    pset = PackageSet(
        name=name,
        summary=t.string("summary", required=True) or "",
        packages=t.strs("packages"),
        exclude=t.strs("exclude"),
        base=t.string("base", pattern=SET_RE),
        variant=t.string("variant"),
        releases=t.strs("releases"),
        environment=t.environment(),
        hooks=t.hooks(),
        description=t.string("description", "") or "",
        path=path,
    )
    if not pset.packages and pset.base is None:
        problems.add(path, "packages", "a set needs packages (or a base set to extend)")
    return pset


@dataclass(frozen=True)
class Catalog:
    """Every template that the metadata directory describes, by canonical name."""

    root: Path
    distributions: Mapping[str, Distribution]
    releases: Mapping[str, tuple[Release, ...]]
    sets: Mapping[str, Mapping[str, PackageSet]]
    templates: Mapping[str, Template]

    def get(self, name: str) -> Template:
        try:
            return self.templates[name]
        except KeyError:
            raise VzError(f"unknown template {name!r}", ExitCode.TEMPLATE_NOT_FOUND) from None


def _resolve_packages(
    dist: Distribution,
    release: Release,
    pset: PackageSet,
    sets: Mapping[str, PackageSet],
    problems: Problems,
) -> tuple[tuple[str, ...], tuple[str, ...], Hooks, dict[str, str], str]:
    chain: list[PackageSet] = []
    current: PackageSet | None = pset
    while current is not None:
        if current in chain:
            problems.add(
                pset.path,
                "base",
                "base sets form a cycle: " + " -> ".join(s.name for s in [*chain, current]),
            )
            break
        chain.append(current)
        if current.base is None:
            break
        nxt = sets.get(current.base)
        if nxt is None:
            problems.add(current.path, "base", f"no set {current.base!r} in {dist.name}")
        current = nxt
    chain.reverse()  # base first
    packages: list[str] = []
    exclude: list[str] = []
    hooks = Hooks()
    env: dict[str, str] = {}
    for s in chain:
        packages.extend(s.packages)
        packages.extend(release.set_packages.get(s.name, ()))
        exclude.extend(s.exclude)
        hooks = hooks + s.hooks
        env.update(s.environment)
    variant = next((s.variant for s in reversed(chain) if s.variant), "minbase")
    kept = tuple(dict.fromkeys(p for p in packages if p not in exclude))
    return kept, tuple(dict.fromkeys(exclude)), hooks, env, variant


def load_catalog(root: Path) -> Catalog:
    """Load every distribution under ``root``; raise VzError listing all problems."""
    problems = Problems()
    if not root.is_dir():
        raise VzError(
            f"metadata directory {root} does not exist",
            ExitCode.CONFIG,
            hint="set METADATA_DIR in the host configuration (docs/configuration.md)",
        )
    distributions: dict[str, Distribution] = {}
    releases: dict[str, tuple[Release, ...]] = {}
    all_sets: dict[str, dict[str, PackageSet]] = {}
    templates: dict[str, Template] = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (directory / "distribution.toml").is_file():
            problems.add(directory, None, "no distribution.toml")
            continue
        dist = _load_distribution(directory, problems)
        if dist is None:
            continue
        distributions[dist.name] = dist
        rels = [
            r
            for p in sorted((directory / "releases").glob("*.toml"))
            if (r := _load_release(p, dist, problems)) is not None
        ]
        versions = [r.version for r in rels]
        for dup in sorted({v for v in versions if versions.count(v) > 1}):
            problems.add(directory / "releases", "version", f"{dup!r} is defined more than once")
        if not rels:
            problems.add(directory / "releases", None, "no release files")
        sets = {
            s.name: s
            for p in sorted((directory / "sets").glob("*.toml"))
            if (s := _load_set(p, problems)) is not None
        }
        if not sets:
            problems.add(directory / "sets", None, "no package set files")
        elif dist.default_set not in sets:
            problems.add(dist.path, "default_set", f"no set {dist.default_set!r}")
        known_versions = set(versions)
        for pset in sets.values():
            for version in pset.releases:
                if version not in known_versions:
                    problems.add(pset.path, "releases", f"no release {version!r} in {dist.name}")
        for rel in rels:
            for sname in rel.set_packages:
                if sname not in sets:
                    problems.add(rel.path, f"sets.{sname}", f"no set {sname!r} in {dist.name}")
        dist = replace(dist, codenames=tuple(r.codename for r in rels if r.codename))
        distributions[dist.name] = dist
        releases[dist.name] = tuple(rels)
        all_sets[dist.name] = sets
        for rel in rels:
            for pset in sets.values():
                if pset.releases and rel.version not in pset.releases:
                    continue
                packages, exclude, hooks, env, variant = _resolve_packages(
                    dist, rel, pset, sets, problems
                )
                for arch in rel.arches or dist.arches:
                    name = f"{dist.name}-{rel.version}-{arch}-{pset.name}"
                    if name in templates:
                        problems.add(rel.path, None, f"template name {name} is defined twice")
                        continue
                    template = Template(
                        name=name,
                        distribution=dist,
                        release=rel,
                        package_set=pset,
                        arch=arch,
                        packages=packages,
                        exclude=exclude,
                        keys=rel.keys or dist.keys,
                        environment={**dist.environment, **rel.environment, **env},
                        hooks=dist.hooks + rel.hooks + hooks,
                        variant=variant,
                    )
                    templates[name] = replace(template, digest=template_digest(template))
    problems.raise_if_any()
    return Catalog(root, distributions, releases, all_sets, templates)
