"""Which value of the tenant column is this organization's: the mapping's constant, or the key of
the one row its lookup finds. Returned as text, spelled the way change capture records it
(`to_jsonb(value) #>> '{}'`), so the two compare equal whatever the column's type."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from golioth_assets.store.local_table.introspect import quote_ident, quote_table
from golioth_assets.store.local_table.mapping import TableMapping, TenantLookup


class TenantError(LookupError):
    """The tenant lookup finds no row, or more than one."""


def describe_where(lookup: TenantLookup) -> str:
    return " and ".join(f"{column} = {value!r}" for column, value in lookup.where.items())


def lookup_tenant(conn: Connection, lookup: TenantLookup) -> str:
    """The looked-up key as text. Raises TenantError unless exactly one row matches."""
    conditions = " AND ".join(f"{quote_ident(column)} = %(w{i})s" for i, column in enumerate(lookup.where))
    params = {f"w{i}": value for i, value in enumerate(lookup.where.values())}
    sql = (
        f"SELECT to_jsonb({quote_ident(lookup.key)}) #>> '{{}}' FROM {quote_table(lookup.table)} "
        f"WHERE {conditions} LIMIT 2"
    )
    rows = conn.exec_driver_sql(sql, params).fetchall()
    if not rows:
        raise TenantError(f"the tenant lookup finds no row of {lookup.table} where {describe_where(lookup)}")
    if len(rows) > 1:
        raise TenantError(
            f"the tenant lookup finds more than one row of {lookup.table} where {describe_where(lookup)};"
            " add columns to `where` until exactly one row matches"
        )
    return rows[0][0]


def tenant_value(conn: Connection, mapping: TableMapping) -> str | None:
    """This organization's tenant value as text; None when the mapping has no tenant (the whole
    table is this organization's)."""
    tenant = mapping.tenant
    if tenant is None:
        return None
    if tenant.lookup is not None:
        return lookup_tenant(conn, tenant.lookup)
    type_sql = conn.exec_driver_sql(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = to_regclass(%(t)s) AND attname = %(c)s AND NOT attisdropped",
        {"t": quote_table(mapping.table), "c": tenant.column},
    ).scalar()
    if type_sql is None:
        raise TenantError(f"column {tenant.column}: does not exist in {mapping.table} (tenant)")
    value = str(tenant.equals).lower() if isinstance(tenant.equals, bool) else str(tenant.equals)
    return conn.exec_driver_sql(f"SELECT to_jsonb(CAST(%(v)s AS {type_sql})) #>> '{{}}'", {"v": value}).scalar()
