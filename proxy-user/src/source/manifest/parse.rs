//! One manifest file's text into checked objects: splits documents (multi-document YAML, or
//! a stream of JSON values), unwraps Lists, dispatches on kind and reports every problem.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, de::DeserializeOwned};
use yaml_serde::Value;

use super::{
    ManifestOptions,
    error::{Context, ManifestError, ObjectRef, Problems, Severity},
    k8s,
    object::{Kind, Object, ObjectKey},
    parser_panic,
    validate::{check_endpoints, check_node, check_pod, check_service, check_slice},
};

/// A valid object and where it was defined.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParsedObject {
    pub key: ObjectKey,
    pub document: usize,
    pub object: Object,
}

/// The valid objects of one file and every problem found in it.
#[derive(Debug, Default)]
pub(crate) struct ParsedFile {
    pub objects: Vec<ParsedObject>,
    pub problems: Vec<ManifestError>,
}

impl ParsedFile {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(ManifestError::is_error)
    }
}

/// Whether the file is read as JSON (by its extension) rather than YAML.
/// The kinds a manifest may have, for the notes on the others.
const READ_KINDS: &str = "Service, EndpointSlice, Endpoints, Pod, Node and List";

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

pub(crate) fn parse_file(path: &Path, text: &str, options: &ManifestOptions) -> ParsedFile {
    let mut parsed = ParsedFile::default();
    let mut index = 0;
    // Each document is checked as soon as it is read and its YAML tree dropped: the trees are
    // several times the size of the objects kept, and read all at once first they left the
    // objects scattered over a heap the allocator could not give back (a daemon with 10k
    // Services held 128 MiB of RSS for 40 MiB of live data).
    let mut each = |document: Result<Value, String>| {
        index += 1;
        let context = Context::new(path, Some(index));
        match document {
            Ok(value) => parse_document(value, &context, options, &mut parsed),
            Err(message) => parsed
                .problems
                .push(context.problem(Severity::Error, None, message)),
        }
    };
    if is_json(path) {
        json_documents(text, &mut each);
    } else {
        yaml_documents(text, &mut each);
    }
    reject_duplicates(path, &mut parsed);
    // Kept for as long as the file is unchanged: without the growth's spare room (up to half).
    parsed.objects.shrink_to_fit();
    parsed
}

/// A file's documents on their way to the checks, each handed on once the next one is read:
/// after a syntax error the last one's message still changes.
struct Documents<'a> {
    last: Option<Result<Value, String>>,
    each: &'a mut dyn FnMut(Result<Value, String>),
}

impl Documents<'_> {
    fn push(&mut self, document: Result<Value, String>) {
        if let Some(previous) = self.last.replace(document) {
            (self.each)(previous);
        }
    }

    fn last_mut(&mut self) -> Option<&mut Result<Value, String>> {
        self.last.as_mut()
    }

    fn finish(mut self) {
        if let Some(last) = self.last.take() {
            (self.each)(last);
        }
    }
}

/// The documents of a YAML stream, each handed to `each` as it is read. A document-level
/// error (a duplicate key) spoils that document only; a syntax error ends the stream, as what
/// follows it cannot be told apart reliably (libyaml then repeats the same error for every
/// further document).
fn yaml_documents(text: &str, each: &mut dyn FnMut(Result<Value, String>)) {
    /// Far more than any manifest; a guard against a parser that never ends.
    const MAX_DOCUMENTS: usize = 100_000;
    const NOT_READ: &str = "; the documents after this one are not read until it is fixed";
    let mut documents = Documents { last: None, each };
    let mut stream = yaml_serde::Deserializer::from_str(text).take(MAX_DOCUMENTS);
    let mut last_error = None;
    loop {
        // Only the parser runs under `catch`: the checks of what it read are ours, and a panic
        // there is a bug to report, not a bad document.
        let Some(read) = parser_panic::catch(|| stream.next().map(Value::deserialize)) else {
            // After an error the parser may panic on the next document: that error stands.
            match documents.last_mut() {
                Some(Err(previous)) if !previous.ends_with(NOT_READ) => {
                    previous.push_str(NOT_READ);
                }
                Some(Err(_)) => {}
                _ => documents.push(Err(format!(
                    "invalid YAML: the parser cannot read this document (an alias `*name` with \
                     no anchor `&name` before it does this){NOT_READ}"
                ))),
            }
            break;
        };
        match read {
            None => break,
            Some(Ok(mut value)) => {
                last_error = None;
                let merged = value.apply_merge().map(|()| value);
                documents.push(merged.map_err(|e| format!("invalid YAML merge key: {e}")));
            }
            Some(Err(e)) => {
                let message = e.to_string();
                if last_error.as_ref() == Some(&message) {
                    if let Some(Err(previous)) = documents.last_mut() {
                        previous.push_str(NOT_READ);
                    }
                    break;
                }
                documents.push(Err(format!("invalid YAML: {message}")));
                last_error = Some(message);
            }
        }
    }
    documents.finish();
}

/// The values of a JSON file (one object, or several one after the other).
fn json_documents(text: &str, each: &mut dyn FnMut(Result<Value, String>)) {
    for value in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        match value.map(yaml_serde::to_value) {
            Ok(Ok(value)) => each(Ok(value)),
            Ok(Err(e)) => each(Err(format!("cannot convert JSON: {e}"))),
            Err(e) => {
                each(Err(format!(
                    "invalid JSON: {e}; the values after this one are not read until it is \
                     fixed"
                )));
                break;
            }
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn str_field<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

fn parse_document(
    value: Value,
    context: &Context,
    options: &ManifestOptions,
    parsed: &mut ParsedFile,
) {
    if value.is_null() {
        return; // an empty document: `---` twice, or only comments
    }
    let list_kind = str_field(&value, "kind").and_then(|kind| kind.strip_suffix("List"));
    let Some(item_kind) = list_kind else {
        parse_object(value, context, None, options, parsed);
        return;
    };
    // `kind: List`, or a typed list like `ServiceList` whose items may omit kind.
    let defaults = Kind::from_kind(item_kind).map(|kind| (kind.as_str(), kind.api_version()));
    if !item_kind.is_empty() && defaults.is_none() {
        let message = format!("kind {item_kind}List is ignored: sluice reads {READ_KINDS}");
        parsed
            .problems
            .push(context.problem(Severity::Note, Some("kind"), message));
        return;
    }
    let items = match value.get("items") {
        None | Some(Value::Null) => return,
        Some(Value::Sequence(items)) => items.clone(),
        Some(other) => {
            let message = format!("expected a list of objects, got {}", type_name(other));
            parsed
                .problems
                .push(context.problem(Severity::Error, Some("items"), message));
            return;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let mut item_context = context.clone();
        item_context.prefix = format!("items[{i}].");
        parse_object(item, &item_context, defaults, options, parsed);
    }
}

/// One object of a file (a document, or an item of a List).
fn parse_object(
    value: Value,
    context: &Context,
    defaults: Option<(&str, &str)>,
    options: &ManifestOptions,
    parsed: &mut ParsedFile,
) {
    let mut context = context.clone();
    if !value.is_mapping() {
        let message = format!(
            "expected a Kubernetes object (a mapping with apiVersion and kind), got {}",
            type_name(&value)
        );
        parsed
            .problems
            .push(context.problem(Severity::Error, None, message));
        return;
    }
    let kind = str_field(&value, "kind").or(defaults.map(|(kind, _)| kind));
    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| str_field(m, "name"));
    let namespace = metadata.and_then(|m| str_field(m, "namespace"));
    let Some(kind) = kind else {
        context.object = name.map(|name| ObjectRef::named("object", namespace, Some(name)));
        let message = "kind is missing: set it to Service, EndpointSlice, Endpoints, Pod or Node";
        parsed
            .problems
            .push(context.problem(Severity::Error, Some("kind"), message));
        return;
    };
    context.object = Some(ObjectRef::named(kind, namespace, name));
    let Some(known) = Kind::from_kind(kind) else {
        let message = format!("{kind} is ignored: sluice reads {READ_KINDS}");
        parsed
            .problems
            .push(context.problem(Severity::Note, Some("kind"), message));
        return;
    };
    let mut p = Problems::new(&context);
    let api_version = str_field(&value, "apiVersion").or(defaults.map(|(_, version)| version));
    let expected = known.api_version();
    match api_version {
        Some(version) if version == expected => {}
        Some(version) => p.error(
            "apiVersion",
            format!(
                "expected {expected} for {kind}, got {version:?}: write apiVersion: {expected}"
            ),
        ),
        None => p.error(
            "apiVersion",
            format!("is missing: write apiVersion: {expected}"),
        ),
    }
    let raw = match known {
        Kind::Service => typed(value, &mut p).map(RawObject::Service),
        Kind::EndpointSlice => typed(value, &mut p).map(RawObject::EndpointSlice),
        Kind::Endpoints => typed(value, &mut p).map(RawObject::Endpoints),
        Kind::Pod => typed(value, &mut p).map(RawObject::Pod),
        Kind::Node => typed(value, &mut p).map(RawObject::Node),
    };
    let object = raw.and_then(|raw| check_object(&raw, options, &mut p));
    parsed.problems.append(&mut p.list);
    if let Some(object) = object {
        parsed.objects.push(ParsedObject {
            key: object.key(),
            document: context.document.unwrap_or(1),
            object,
        });
    }
}

/// An object read into the Kubernetes subset ([`k8s`]), before its checks: a file's
/// document deserialized, or an API server's object converted.
#[derive(Clone, Debug)]
pub(crate) enum RawObject {
    Service(k8s::Service),
    EndpointSlice(k8s::EndpointSlice),
    Endpoints(k8s::Endpoints),
    Pod(k8s::Pod),
    Node(k8s::Node),
}

/// The checks every object goes through, however it was read. The checked object, unless
/// `p` holds an error (also one found before, like a wrong apiVersion).
pub(crate) fn check_object(
    raw: &RawObject,
    options: &ManifestOptions,
    p: &mut Problems,
) -> Option<Object> {
    let object = match raw {
        RawObject::Service(raw) => check_service(raw, options, p).map(Object::Service),
        RawObject::EndpointSlice(raw) => check_slice(raw, p).map(Object::EndpointSlice),
        RawObject::Endpoints(raw) => check_endpoints(raw, p).map(Object::Endpoints),
        RawObject::Pod(raw) => check_pod(raw, p).map(Object::Pod),
        RawObject::Node(raw) => check_node(raw, p).map(Object::Node),
    };
    object.filter(|_| !p.has_errors())
}

/// Deserializes into the serde type, reporting a type error with its field path.
fn typed<T: DeserializeOwned>(value: Value, p: &mut Problems) -> Option<T> {
    // Tracking the path costs on every field, and only a failure needs it: a valid object is
    // read without it.
    if let Ok(raw) = T::deserialize(&value) {
        return Some(raw);
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(raw) => Some(raw),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { "" } else { path.as_str() };
            p.error(field, e.inner().to_string());
            None
        }
    }
}

/// The same object twice in one file: the first wins, the second is an error.
fn reject_duplicates(path: &Path, parsed: &mut ParsedFile) {
    let mut first: BTreeMap<ObjectKey, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    parsed.objects.retain(|object| {
        if let Some(&document) = first.get(&object.key) {
            let mut context = Context::new(path, Some(object.document));
            context.object = Some(object.key.object_ref());
            problems.push(context.problem(
                Severity::Error,
                Some("metadata.name"),
                format!(
                    "{} is already defined in document {document} of this file: rename or \
                 remove one of them",
                    object.key
                ),
            ));
            false
        } else {
            first.insert(object.key.clone(), object.document);
            true
        }
    });
    parsed.problems.extend(problems);
}
