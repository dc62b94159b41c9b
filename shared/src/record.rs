//! A statement's row as its function returns it: one `record` value ([`crate::procedures`]).
//!
//! The function is called in the select list (`SELECT f(…)`), not as a table
//! (`SELECT * FROM f(…)`): a table function costs Postgres a scan node and a tuple store per
//! call, 7,600 instructions of a get's 100,400 (callgrind, BENCHMARKS.md). What it returns
//! is a value of the built-in type `record`, so the client needs no lookup of a type of ours
//! (tokio-postgres would look one up with a prepared statement of its own, which PgBouncer
//! before 1.21 cannot carry). Postgres sends a record in binary as its number of fields,
//! then each field's type OID and its bytes (`record_send`), which [`Record`] reads; the
//! fields are decoded by their own types' [`FromSql`]. The listings return sets and are
//! read as rows ([`crate::procedures::Returns`]).

use std::error::Error;
use std::ops::Range;

use anyhow::{anyhow, Context as _};
use tokio_postgres::types::{FromSql, Kind, Type};
use tokio_postgres::Row;

/// One row: its fields by position, each with its type and its binary value (`None` for
/// NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    bytes: Vec<u8>,
    fields: Vec<(Type, Option<Range<usize>>)>,
}

impl Record {
    /// Reads a record in Postgres' binary format: the number of fields, then for each its
    /// type OID, its length (-1 for NULL) and that many bytes.
    pub fn parse(raw: &[u8]) -> Result<Record, Box<dyn Error + Sync + Send>> {
        let mut at = 0;
        let count = usize::try_from(int(raw, &mut at)?).map_err(|_| "negative field count")?;
        let mut fields = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let oid = int(raw, &mut at)? as u32;
            let ty = Type::from_oid(oid)
                .ok_or_else(|| format!("record field of type OID {oid}, not a built-in type"))?;
            let value = match usize::try_from(int(raw, &mut at)?) {
                Ok(len) => {
                    let value = at..at + len;
                    if value.end > raw.len() {
                        return Err("record ends early".into());
                    }
                    at = value.end;
                    Some(value)
                }
                // A negative length is NULL.
                Err(_) => None,
            };
            fields.push((ty, value));
        }
        Ok(Record {
            bytes: raw.to_vec(),
            fields,
        })
    }

    /// A row of plain columns, as a record of them: a listing's rows (its function is
    /// called as a table) and the benchmarks' bare statements.
    pub fn from_row(row: &Row) -> anyhow::Result<Record> {
        let mut bytes = Vec::new();
        let mut fields = Vec::with_capacity(row.len());
        for (index, column) in row.columns().iter().enumerate() {
            let Raw(value) = row.try_get(index).context("reading a column")?;
            let value = value.map(|value| {
                let start = bytes.len();
                bytes.extend_from_slice(value);
                start..bytes.len()
            });
            fields.push((column.type_().clone(), value));
        }
        Ok(Record { bytes, fields })
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether every field is NULL: what a function returns when its statement found no
    /// row (PL/pgSQL's `SELECT … INTO` sets a `record` to a row of NULLs). Every statement
    /// of the API returns a column that is never NULL in a row it found.
    pub fn is_no_row(&self) -> bool {
        self.fields.iter().all(|(_, value)| value.is_none())
    }

    /// Field `index`, decoded as `T`.
    pub fn try_get<'a, T: FromSql<'a>>(&'a self, index: usize) -> anyhow::Result<T> {
        let (ty, value) = self
            .fields
            .get(index)
            .ok_or_else(|| anyhow!("the row has no field {index}"))?;
        if !T::accepts(ty) {
            return Err(anyhow!(
                "field {index} is of type {ty}, not {}",
                std::any::type_name::<T>()
            ));
        }
        let value = value.clone().map(|range| &self.bytes[range]);
        T::from_sql_nullable(ty, value).map_err(|err| anyhow!("field {index}: {err}"))
    }
}

impl<'a> FromSql<'a> for Record {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Record::parse(raw)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::RECORD || matches!(ty.kind(), Kind::Composite(_))
    }
}

/// The big-endian `int4` at `at`, which then moves past it.
fn int(raw: &[u8], at: &mut usize) -> Result<i32, Box<dyn Error + Sync + Send>> {
    let bytes = raw.get(*at..*at + 4).ok_or("value ends early")?;
    *at += 4;
    Ok(i32::from_be_bytes(bytes.try_into()?))
}

/// Any column's binary value, as it came.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `record_send`'s layout: the field count, then each field's type, length and bytes.
    fn record(fields: &[(u32, Option<&[u8]>)]) -> Vec<u8> {
        let mut raw = (fields.len() as i32).to_be_bytes().to_vec();
        for (oid, value) in fields {
            raw.extend(oid.to_be_bytes());
            match value {
                Some(value) => {
                    raw.extend((value.len() as i32).to_be_bytes());
                    raw.extend(*value);
                }
                None => raw.extend((-1_i32).to_be_bytes()),
            }
        }
        raw
    }

    #[test]
    fn fields_are_read_by_position_and_type() {
        let raw = record(&[
            (Type::INT8.oid(), Some(&42_i64.to_be_bytes())),
            (Type::TEXT.oid(), Some(b"title")),
            (Type::TEXT.oid(), None),
            (Type::BOOL.oid(), Some(&[1])),
        ]);
        let row = Record::parse(&raw).unwrap();
        assert_eq!(row.len(), 4);
        assert_eq!(row.try_get::<i64>(0).unwrap(), 42);
        assert_eq!(row.try_get::<&str>(1).unwrap(), "title");
        assert_eq!(row.try_get::<Option<String>>(2).unwrap(), None);
        assert!(row.try_get::<String>(2).is_err(), "NULL into a String");
        assert!(row.try_get::<bool>(0).is_err(), "an int8 as a bool");
        assert!(row.try_get::<bool>(4).is_err(), "no fifth field");
        assert!(row.try_get::<bool>(3).unwrap());
        assert!(!row.is_no_row());
    }

    #[test]
    fn a_row_of_nulls_is_no_row() {
        let raw = record(&[(Type::UUID.oid(), None), (Type::TEXT.oid(), None)]);
        assert!(Record::parse(&raw).unwrap().is_no_row());
    }

    #[test]
    fn damaged_or_foreign_records_are_errors() {
        let raw = record(&[(Type::TEXT.oid(), Some(b"title"))]);
        for end in 0..raw.len() {
            assert!(Record::parse(&raw[..end]).is_err(), "cut at {end}");
        }
        // A type of ours (a domain, say) has an OID no client knows: refused, not guessed.
        let foreign = record(&[(90_000, Some(b"x"))]);
        assert!(Record::parse(&foreign).is_err());
    }
}
