"""The registry's operations: each one reads or writes the store in one transaction and applies the
rules of :mod:`services.schema_registry.model`. Answers are JSON-ready values shaped like Confluent's.

Only what is immutable is cached in-process — a schema by its id (ids are never reassigned and schema
rows never deleted) and its parsed form — so any number of instances can serve the same database.
Subjects, versions, config and modes are always read from PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import avro.name
import psycopg

from services.kernel import metrics
from services.kernel.caches import BoundedCache
from services.schema_registry import model
from services.schema_registry.model import (
    LATEST,
    Compatibility,
    ErrorCode,
    Lookup,
    Mode,
    ParsedSchema,
    RegistryError,
    ResolvedReference,
    SchemaReference,
    SchemaRequest,
    VersionRow,
    VersionSpec,
)
from services.schema_registry.store import GLOBAL_SCOPE, Store, StoredSchema, Tx

CACHED = metrics.gauge(
    "plg_registry_cache_entries",
    "Schemas cached in memory by id, by form: stored (the row) and parsed (bounded by REGISTRY_CACHE_SIZE "
    "each).",
    ("form",),
)


@dataclass(frozen=True)
class Candidate:
    """A schema from a request, parsed and identified, ready to be looked up or registered."""

    request: SchemaRequest
    parsed: ParsedSchema
    references: tuple[ResolvedReference, ...]
    fingerprint: str


class Registry:
    def __init__(
        self,
        store: Store,
        default_compatibility: Compatibility = Compatibility.BACKWARD,
        cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.default_compatibility = default_compatibility
        self._schemas: BoundedCache[int, StoredSchema] = BoundedCache(
            cache_size, gauge=CACHED.labels("stored")
        )
        self._parsed: BoundedCache[int, ParsedSchema] = BoundedCache(
            cache_size, gauge=CACHED.labels("parsed")
        )

    # -- schema loading ------------------------------------------------------------------------------------

    def _stored(self, tx: Tx, schema_id: int) -> StoredSchema | None:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        stored = tx.schema_by_id(schema_id)
        if stored is not None:
            self._schemas.put(schema_id, stored)
        return stored

    def _parsed_by_id(self, tx: Tx, schema_id: int) -> ParsedSchema:
        cached = self._parsed.get(schema_id)
        if cached is not None:
            return cached
        stored = self._stored(tx, schema_id)
        if stored is None:
            raise model.schema_not_found(f"Schema {schema_id} not found")
        refs = tuple(
            ResolvedReference(
                SchemaReference(r["name"], r["subject"], int(r["version"])),
                int(r["version"]),
                int(r["id"]),
                self._parsed_by_id(tx, int(r["id"])),
            )
            for r in stored.references
        )
        parsed = model.parse_avro(stored.schema_text, refs)
        self._parsed.put(schema_id, parsed)
        return parsed

    def _resolve_references(self, tx: Tx, refs: Sequence[SchemaReference]) -> tuple[ResolvedReference, ...]:
        resolved: list[ResolvedReference] = []
        for ref in refs:
            rows = tx.versions(ref.subject)
            spec: VersionSpec = LATEST if ref.version == -1 else ref.version
            try:
                # A reference may point at a soft-deleted version (Confluent resolves them too).
                row = model.select_version(ref.subject, rows, spec, include_deleted=spec != LATEST)
            except RegistryError:
                raise model.invalid_schema(
                    f"reference {ref.name!r} points at subject {ref.subject!r} version {ref.version}, "
                    "which does not exist"
                ) from None
            resolved.append(
                ResolvedReference(ref, row.version, row.schema_id, self._parsed_by_id(tx, row.schema_id))
            )
        return tuple(resolved)

    def _candidate(self, tx: Tx, body: Any) -> Candidate:
        request = model.parse_schema_request(body)
        references = self._resolve_references(tx, request.references)
        parsed = model.parse_avro(request.schema, references)
        fp = model.fingerprint(parsed, request.schema_type, references, request.metadata, request.rule_set)
        return Candidate(request, parsed, references, fp)

    def _effective_level(self, tx: Tx, subject: str) -> Compatibility:
        return tx.get_config(subject) or tx.get_config(GLOBAL_SCOPE) or self.default_compatibility

    def _effective_mode(self, tx: Tx, subject: str) -> Mode:
        return tx.get_mode(subject) or tx.get_mode(GLOBAL_SCOPE) or Mode.READWRITE

    def _schema_response(self, stored: StoredSchema) -> dict[str, Any]:
        return model.schema_fields(
            stored.schema_text, stored.schema_type, stored.references, stored.metadata, stored.rule_set
        )

    def _version_response(self, tx: Tx, subject: str, row: VersionRow) -> dict[str, Any]:
        stored = self._stored(tx, row.schema_id)
        if stored is None:  # pragma: no cover - a version row always has its schema (foreign key)
            raise model.schema_not_found()
        out: dict[str, Any] = {
            "subject": subject,
            "version": row.version,
            "id": stored.id,
            "guid": stored.guid,
        }
        out.update(self._schema_response(stored))
        if row.deleted:
            out["deleted"] = True
        return out

    # -- registration and lookup ---------------------------------------------------------------------------

    def register(self, subject: str, body: Any, normalize: bool = False) -> dict[str, Any]:
        """``POST /subjects/{subject}/versions``: the schema's id (and version) in this subject.

        An already registered schema returns its existing version; a new one is checked against the
        subject's compatibility level first and gets the next version number.
        """
        model.validate_subject(subject)
        for attempt in range(3):
            try:
                return self._register_once(subject, body, normalize)
            except psycopg.errors.UniqueViolation as exc:
                # Only reachable in IMPORT mode, where ids are chosen by the client and may collide with an
                # id another instance is handing out right now; retry sees the committed state.
                if attempt == 2:
                    raise model.not_permitted(f"Could not register: {exc.diag.message_primary}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _register_once(self, subject: str, body: Any, normalize: bool) -> dict[str, Any]:
        with self.store.transaction() as tx:
            candidate = self._candidate(tx, body)
        request = candidate.request
        with self.store.transaction() as tx:
            tx.lock_subject(subject)
            mode = self._effective_mode(tx, subject)
            if mode.read_only:
                raise model.not_permitted(f"Subject '{subject}' is in read-only mode ({mode.value})")
            importing = mode is Mode.IMPORT
            if not importing and (request.schema_id is not None or request.version is not None):
                raise model.not_permitted(
                    f"Subject '{subject}' is not in import mode: "
                    "'id' and 'version' may only be given in IMPORT mode"
                )
            rows = tx.versions(subject)
            existing_id = tx.schema_id_by_fingerprint(candidate.fingerprint)
            if existing_id is not None:
                for row in reversed(rows):
                    if row.schema_id == existing_id and not row.deleted:
                        if request.version is not None and request.version != row.version:
                            raise model.not_permitted(
                                f"The schema is already version {row.version} of subject '{subject}', "
                                f"not version {request.version}"
                            )
                        return self._registered(tx, subject, row.version, existing_id)
            if not importing:
                level = self._effective_level(tx, subject)
                previous = [
                    (row.version, self._parsed_by_id(tx, row.schema_id))
                    for row in model.versions_to_check(level, rows)
                ]
                issues = model.check_compatibility(level, candidate.parsed, previous)
                if issues:
                    raise model.incompatible_error(subject, level, issues)
            schema_id = self._store_schema(tx, candidate, normalize, existing_id)
            if request.version is not None and any(r.version == request.version for r in rows):
                raise model.not_permitted(
                    f"Version {request.version} of subject '{subject}' already exists with another schema"
                )
            version = tx.next_version(subject, request.version)
            tx.insert_version(subject, version, schema_id)
            return self._registered(tx, subject, version, schema_id)

    def _store_schema(self, tx: Tx, candidate: Candidate, normalize: bool, existing_id: int | None) -> int:
        wanted = candidate.request.schema_id
        if wanted is not None:
            holder = tx.schema_by_id(wanted)
            if holder is not None and holder.fingerprint != candidate.fingerprint:
                raise model.not_permitted(f"Overwrite new schema with id {wanted} is not permitted.")
            if existing_id is not None and existing_id != wanted:
                raise model.not_permitted(
                    f"The same schema is already registered with id {existing_id}; this registry gives one "
                    f"schema exactly one id, so it cannot also be id {wanted}"
                )
            if holder is not None:
                return holder.id
        elif existing_id is not None:
            return existing_id
        refs = [
            {
                "name": r.reference.name,
                "subject": r.reference.subject,
                "version": r.version,
                "id": r.schema_id,
            }
            for r in candidate.references
        ]
        return tx.insert_schema(
            fingerprint=candidate.fingerprint,
            schema_type=candidate.request.schema_type,
            schema_text=candidate.parsed.canonical if normalize else candidate.request.schema,
            canonical=candidate.parsed.canonical,
            references=refs,
            metadata=dict(candidate.request.metadata) if candidate.request.metadata is not None else None,
            rule_set=dict(candidate.request.rule_set) if candidate.request.rule_set is not None else None,
            schema_id=wanted,
        )

    def _registered(self, tx: Tx, subject: str, version: int, schema_id: int) -> dict[str, Any]:
        stored = self._stored(tx, schema_id)
        assert stored is not None
        # Confluent answers {"id"} (newer versions add guid, version...); the schema text is left out so the
        # client keeps caching the schema object it registered.
        return {"id": schema_id, "guid": stored.guid, "subject": subject, "version": version}

    def lookup(self, subject: str, body: Any, deleted: bool = False) -> dict[str, Any]:
        """``POST /subjects/{subject}``: is this schema registered under the subject, and as which version?"""
        model.validate_subject(subject)
        with self.store.transaction() as tx:
            candidate = self._candidate(tx, body)
            rows = model.visible(tx.versions(subject), Lookup.ALL if deleted else Lookup.LIVE)
            if not rows:
                raise model.subject_not_found(subject)
            schema_id = tx.schema_id_by_fingerprint(candidate.fingerprint)
            matches = [r for r in rows if r.schema_id == schema_id]
            if schema_id is None or not matches:
                raise model.schema_not_found(f"Schema not found under subject '{subject}'")
            live = [r for r in matches if not r.deleted]
            return self._version_response(tx, subject, (live or matches)[-1])

    # -- schemas by id -------------------------------------------------------------------------------------

    def schema_by_id(
        self, schema_id: int, fmt: str | None = None, fetch_max_id: bool = False
    ) -> dict[str, Any]:
        # The deserializers' hot path: answered from memory once seen, without borrowing a connection.
        cached = self._schemas.get(schema_id)
        if cached is not None and not fetch_max_id and not (fmt == "resolved" and cached.references):
            return {"id": cached.id, "guid": cached.guid, **self._schema_response(cached)}
        with self.store.transaction() as tx:
            stored = self._stored(tx, schema_id)
            if stored is None:
                raise model.schema_not_found(f"Schema {schema_id} not found")
            out = {"id": stored.id, "guid": stored.guid, **self._schema_response(stored)}
            if fmt == "resolved" and stored.references:
                parsed = self._parsed_by_id(tx, schema_id)
                out["schema"] = json.dumps(parsed.avro_schema.to_json(avro.name.Names(validate_names=False)))
                out.pop("references", None)
            if fetch_max_id:
                out["maxId"] = tx.max_schema_id()
            return out

    def schema_by_guid(self, guid: str) -> dict[str, Any]:
        with self.store.transaction() as tx:
            try:
                stored = tx.schema_by_guid(guid)
            except psycopg.errors.InvalidTextRepresentation:
                stored = None
            if stored is None:
                raise model.schema_not_found(f"Schema with guid {guid} not found")
            self._schemas.put(stored.id, stored)
            return {"id": stored.id, "guid": stored.guid, **self._schema_response(stored)}

    def schema_text_by_id(self, schema_id: int) -> str:
        return str(self.schema_by_id(schema_id)["schema"])

    def subjects_of_schema(self, schema_id: int, subject: str | None, deleted: bool) -> list[str]:
        pairs = self.versions_of_schema(schema_id, subject, deleted)
        return sorted({p["subject"] for p in pairs})

    def versions_of_schema(self, schema_id: int, subject: str | None, deleted: bool) -> list[dict[str, Any]]:
        with self.store.transaction() as tx:
            if self._stored(tx, schema_id) is None:
                raise model.schema_not_found(f"Schema {schema_id} not found")
            pairs = tx.versions_of_schema(schema_id, Lookup.from_flags(deleted), subject)
            return [{"subject": s, "version": v} for s, v in pairs]

    def list_schemas(self, prefix: str, deleted: bool, latest_only: bool) -> list[dict[str, Any]]:
        with self.store.transaction() as tx:
            out = []
            for subject, version, stored in tx.list_schemas(prefix, Lookup.from_flags(deleted), latest_only):
                self._schemas.put(stored.id, stored)
                out.append(
                    {
                        "subject": subject,
                        "version": version,
                        "id": stored.id,
                        "guid": stored.guid,
                        **self._schema_response(stored),
                    }
                )
            return out

    # -- subjects and versions -----------------------------------------------------------------------------

    def subjects(self, prefix: str, deleted: bool, deleted_only: bool) -> list[str]:
        with self.store.transaction() as tx:
            return tx.subjects(Lookup.from_flags(deleted, deleted_only), prefix)

    def versions(self, subject: str, deleted: bool, deleted_only: bool) -> list[int]:
        with self.store.transaction() as tx:
            rows = model.visible(tx.versions(subject), Lookup.from_flags(deleted, deleted_only))
            if not rows:
                raise model.subject_not_found(subject)
            return [r.version for r in rows]

    def version(self, subject: str, spec: VersionSpec, deleted: bool = False) -> dict[str, Any]:
        with self.store.transaction() as tx:
            row = model.select_version(subject, tx.versions(subject), spec, include_deleted=deleted)
            return self._version_response(tx, subject, row)

    def referenced_by(self, subject: str, spec: VersionSpec) -> list[int]:
        with self.store.transaction() as tx:
            row = model.select_version(subject, tx.versions(subject), spec, include_deleted=False)
            return tx.referencing_schema_ids(subject, row.version, Lookup.LIVE)

    def latest_with_metadata(self, subject: str, wanted: Mapping[str, str], deleted: bool) -> dict[str, Any]:
        with self.store.transaction() as tx:
            rows = model.visible(tx.versions(subject), Lookup.ALL if deleted else Lookup.LIVE)
            if not rows:
                raise model.subject_not_found(subject)
            for row in reversed(rows):
                stored = self._stored(tx, row.schema_id)
                if stored is not None and model.metadata_matches(stored.metadata, wanted):
                    return self._version_response(tx, subject, row)
            raise model.version_not_found(subject, f"with metadata {dict(wanted)}")

    # -- deletes -------------------------------------------------------------------------------------------

    def _refuse_if_referenced(self, tx: Tx, subject: str, versions: Sequence[int], lookup: Lookup) -> None:
        for version in versions:
            if tx.referencing_schema_ids(subject, version, lookup):
                raise RegistryError(
                    ErrorCode.REFERENCE_EXISTS,
                    f"One or more references exist to the schema {{subject={subject},version={version}}}.",
                )

    def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        """Soft delete hides every live version (and drops the subject's config and mode, as Confluent
        does); a permanent delete, allowed only after a soft delete, removes the versions for good."""
        with self.store.transaction() as tx:
            tx.lock_subject(subject)
            rows = tx.versions(subject)
            if not rows:
                raise model.subject_not_found(subject)
            live = [r.version for r in rows if not r.deleted]
            if self._effective_mode(tx, subject).read_only:
                raise model.not_permitted(f"Subject '{subject}' is in read-only mode")
            if permanent:
                if live:
                    raise RegistryError(
                        ErrorCode.SUBJECT_NOT_SOFT_DELETED,
                        f"Subject '{subject}' was not deleted first before being permanently deleted",
                    )
                everything = [r.version for r in rows]
                self._refuse_if_referenced(tx, subject, everything, Lookup.ALL)
                tx.hard_delete(subject, everything)
                tx.drop_subject(subject)
                return everything
            if not live:
                raise RegistryError(
                    ErrorCode.SUBJECT_SOFT_DELETED,
                    f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently",
                )
            self._refuse_if_referenced(tx, subject, live, Lookup.LIVE)
            tx.soft_delete(subject, live)
            tx.delete_config(subject)
            tx.delete_mode(subject)
            return live

    def delete_version(self, subject: str, spec: VersionSpec, permanent: bool) -> int:
        with self.store.transaction() as tx:
            tx.lock_subject(subject)
            rows = tx.versions(subject)
            if not rows:
                raise model.subject_not_found(subject)
            if self._effective_mode(tx, subject).read_only:
                raise model.not_permitted(f"Subject '{subject}' is in read-only mode")
            if permanent:
                row = model.select_version(subject, rows, spec, include_deleted=True)
                if not row.deleted:
                    raise RegistryError(
                        ErrorCode.VERSION_NOT_SOFT_DELETED,
                        f"Subject '{subject}' Version {row.version} was not deleted first before being "
                        "permanently deleted",
                    )
                self._refuse_if_referenced(tx, subject, [row.version], Lookup.ALL)
                tx.hard_delete(subject, [row.version])
                return row.version
            if spec != LATEST and any(r.version == spec and r.deleted for r in rows):
                raise RegistryError(
                    ErrorCode.VERSION_SOFT_DELETED,
                    f"Subject '{subject}' Version {spec} was soft deleted. "
                    "Set permanent=true to delete permanently",
                )
            row = model.select_version(subject, rows, spec, include_deleted=False)
            self._refuse_if_referenced(tx, subject, [row.version], Lookup.LIVE)
            tx.soft_delete(subject, [row.version])
            return row.version

    # -- compatibility -------------------------------------------------------------------------------------

    def test_compatibility(
        self, subject: str, spec: VersionSpec | None, body: Any, verbose: bool
    ) -> dict[str, Any]:
        """``POST /compatibility/subjects/{s}/versions[/{v}]``: would this schema be accepted?

        Against one version when one is named (with the direction of the subject's level), else against
        the versions the level prescribes (latest, or all for transitive levels).
        """
        with self.store.transaction() as tx:
            candidate = self._candidate(tx, body)
            level = self._effective_level(tx, subject)
            rows = tx.versions(subject)
            if spec is None:
                chosen = model.versions_to_check(level, rows)
            else:
                chosen = [model.select_version(subject, rows, spec, include_deleted=False)]
            previous = [(r.version, self._parsed_by_id(tx, r.schema_id)) for r in chosen]
            issues = model.check_compatibility(level, candidate.parsed, previous)
        out: dict[str, Any] = {"is_compatible": not issues}
        if verbose:
            out["messages"] = model.incompatibility_messages(level, issues) if issues else []
        return out

    # -- config --------------------------------------------------------------------------------------------

    def get_config(self, subject: str | None, default_to_global: bool) -> dict[str, Any]:
        with self.store.transaction() as tx:
            if subject is None:
                level = tx.get_config(GLOBAL_SCOPE) or self.default_compatibility
                return {"compatibilityLevel": level.value}
            own = tx.get_config(subject)
            if own is not None:
                return {"compatibilityLevel": own.value}
            if default_to_global:
                level = tx.get_config(GLOBAL_SCOPE) or self.default_compatibility
                return {"compatibilityLevel": level.value}
            if not tx.subject_exists(subject):
                raise model.subject_not_found(subject)
            raise RegistryError(
                ErrorCode.SUBJECT_COMPATIBILITY_NOT_CONFIGURED,
                f"Subject '{subject}' does not have subject-level compatibility configured",
            )

    def set_config(self, subject: str | None, body: Any) -> dict[str, Any]:
        level = model.parse_config_request(body)
        if subject is not None:
            model.validate_subject(subject)
        with self.store.transaction() as tx:
            tx.set_config(GLOBAL_SCOPE if subject is None else subject, level)
        return {"compatibility": level.value}

    def delete_config(self, subject: str | None) -> dict[str, Any]:
        with self.store.transaction() as tx:
            if subject is None:
                old = tx.delete_config(GLOBAL_SCOPE) or self.default_compatibility
                return {"compatibilityLevel": old.value}
            removed = tx.delete_config(subject)
            if removed is None:
                if not tx.subject_exists(subject):
                    raise model.subject_not_found(subject)
                raise RegistryError(
                    ErrorCode.SUBJECT_COMPATIBILITY_NOT_CONFIGURED,
                    f"Subject '{subject}' does not have subject-level compatibility configured",
                )
            return {"compatibilityLevel": removed.value}

    # -- mode ----------------------------------------------------------------------------------------------

    def get_mode(self, subject: str | None, default_to_global: bool) -> dict[str, Any]:
        with self.store.transaction() as tx:
            if subject is None:
                return {"mode": (tx.get_mode(GLOBAL_SCOPE) or Mode.READWRITE).value}
            own = tx.get_mode(subject)
            if own is not None:
                return {"mode": own.value}
            if default_to_global:
                return {"mode": (tx.get_mode(GLOBAL_SCOPE) or Mode.READWRITE).value}
            raise RegistryError(
                ErrorCode.SUBJECT_MODE_NOT_CONFIGURED,
                f"Subject '{subject}' does not have subject-level mode configured",
            )

    def set_mode(self, subject: str | None, body: Any, force: bool) -> dict[str, Any]:
        mode = model.parse_mode_request(body)
        if subject is not None:
            model.validate_subject(subject)
        with self.store.transaction() as tx:
            if mode is Mode.IMPORT and not force and tx.any_versions(subject):
                # Importing assigns client-chosen ids and versions: only safe into an empty registry/subject.
                raise model.not_permitted(
                    "Cannot import since found existing subjects; set force=true to switch to IMPORT anyway"
                )
            tx.set_mode(GLOBAL_SCOPE if subject is None else subject, mode)
        return {"mode": mode.value}

    def delete_mode(self, subject: str) -> dict[str, Any]:
        with self.store.transaction() as tx:
            removed = tx.delete_mode(subject)
            if removed is None:
                raise RegistryError(
                    ErrorCode.SUBJECT_MODE_NOT_CONFIGURED,
                    f"Subject '{subject}' does not have subject-level mode configured",
                )
            return {"mode": removed.value}
