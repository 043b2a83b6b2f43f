//! Schemas the OpenAPI document shares that no Rust type derives: JSON that PostgreSQL's `jsonb` can store.
//!
//! A payload, trigger data or an event's payload is any JSON, except that `jsonb` cannot hold U+0000 in a string
//! or a key; such a request is answered 422 (a data exception, see `error.rs`). These schemas say so, so that
//! what the document calls valid is what the server stores.

use std::borrow::Cow;

use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// A string without U+0000.
const NO_NUL: &str = "^[^\\x00]*$";

/// Any JSON value `jsonb` can store: no U+0000 in a string or an object key. Recursive.
pub struct StorableJson;

impl PartialSchema for StorableJson {
    fn schema() -> RefOr<Schema> {
        let any = || Ref::from_schema_name(StorableJson::name());
        AnyOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                Type::Null,
                Type::Boolean,
                Type::Number,
            ])))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(NO_NUL)),
            )
            .item(ArrayBuilder::new().items(any()))
            .item(storable_object(any()))
            .description(Some(
                "Any JSON value, except that no string or key may contain U+0000 (PostgreSQL's jsonb cannot \
                 store it)",
            ))
            .into()
    }
}

impl ToSchema for StorableJson {
    fn name() -> Cow<'static, str> {
        "StorableJson".into()
    }
}

/// A JSON object `jsonb` can store: its keys and values have no U+0000.
pub struct StorableObject;

impl PartialSchema for StorableObject {
    fn schema() -> RefOr<Schema> {
        storable_object(Ref::from_schema_name(StorableJson::name())).into()
    }
}

impl ToSchema for StorableObject {
    fn name() -> Cow<'static, str> {
        "StorableObject".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((StorableJson::name().into(), StorableJson::schema()));
    }
}

fn storable_object(value: Ref) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NO_NUL)),
        ))
        .additional_properties(Some(value))
}
