//! `ManifestError`: one problem in the manifests, naming file, document, object and field.

use std::{fmt, path::PathBuf};

use serde::Serialize;

use super::object::Kind;

/// How bad a problem is. Only `Error` makes a document invalid (its object keeps its last
/// good version) and makes `sluice validate` fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    /// Something skipped on purpose (an unknown kind, an IPv6 slice): worth knowing only.
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        })
    }
}

/// `Service default/web`: the object a problem is about, as far as it is known.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl ObjectRef {
    /// An empty `namespace`: a cluster-scoped object.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind: kind.to_owned(),
            namespace: Some(namespace.to_owned()).filter(|ns| !ns.is_empty()),
            name: Some(name.to_owned()),
        }
    }

    /// The object as its metadata names it, before any check: a missing or empty namespace
    /// is `default`, as Kubernetes has it, and a cluster-scoped kind has none.
    pub fn named(kind: &str, namespace: Option<&str>, name: Option<&str>) -> Self {
        let cluster_scoped = Kind::from_kind(kind).is_some_and(Kind::is_cluster_scoped);
        ObjectRef {
            kind: kind.to_owned(),
            namespace: (!cluster_scoped).then(|| {
                namespace
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or("default")
                    .to_owned()
            }),
            name: name.map(str::to_owned),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}"),
            (None, Some(name)) => write!(f, " {name}"),
            _ => Ok(()),
        }
    }
}

/// One problem found in the manifests.
///
/// Displays as `examples/web.yaml: document 2 (Service default/web): spec.ports[0].port:
/// expected an integer 1-65535, got 0`. The severity is not part of the display: print it
/// in front (`error: ...`) where it matters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManifestError {
    pub severity: Severity,
    /// The file, as the directory was given joined with the file name.
    pub file: PathBuf,
    /// 1-based index of the YAML document (or JSON value) in the file.
    pub document: Option<usize>,
    pub object: Option<ObjectRef>,
    /// Field path inside the document, like `spec.ports[0].targetPort`.
    pub field: Option<String>,
    /// What was wrong and what to do.
    pub message: String,
}

impl ManifestError {
    /// An error about a whole file (unreadable, not a manifest).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ManifestError {
            severity: Severity::Error,
            file: file.into(),
            document: None,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub(crate) fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Where problems of one document go: fills in file, document and object for each.
#[derive(Clone, Debug)]
pub(crate) struct Context {
    pub file: PathBuf,
    pub document: Option<usize>,
    pub object: Option<ObjectRef>,
    /// Prefix for field paths, like `items[3].` inside a List.
    pub prefix: String,
}

impl Context {
    pub fn new(file: impl Into<PathBuf>, document: Option<usize>) -> Self {
        Context {
            file: file.into(),
            document,
            object: None,
            prefix: String::new(),
        }
    }

    pub fn problem(
        &self,
        severity: Severity,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> ManifestError {
        let field = match field {
            Some(field) => Some(format!("{}{field}", self.prefix)),
            None if !self.prefix.is_empty() => Some(self.prefix.trim_end_matches('.').to_owned()),
            None => None,
        };
        ManifestError {
            severity,
            file: self.file.clone(),
            document: self.document,
            object: self.object.clone(),
            field,
            message: message.into(),
        }
    }
}

/// Collects the problems of one object while it is checked.
#[derive(Debug)]
pub(crate) struct Problems<'a> {
    pub context: &'a Context,
    pub list: Vec<ManifestError>,
}

impl<'a> Problems<'a> {
    pub fn new(context: &'a Context) -> Self {
        Problems {
            context,
            list: Vec::new(),
        }
    }

    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    pub fn warning(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }

    pub fn note(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Note, field, message);
    }

    fn push(&mut self, severity: Severity, field: &str, message: impl Into<String>) {
        let field = (!field.is_empty()).then_some(field);
        self.list
            .push(self.context.problem(severity, field, message));
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(ManifestError::is_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_document_object_and_field() {
        let mut context = Context::new("examples/web.yaml", Some(2));
        context.object = Some(ObjectRef::new("Service", "default", "web"));
        let error = context.problem(
            Severity::Error,
            Some("spec.ports[0].targetPort"),
            "expected an integer 1-65535 or an IANA port name, got \"80x\"",
        );
        assert_eq!(
            error.to_string(),
            "examples/web.yaml: document 2 (Service default/web): spec.ports[0].targetPort: \
             expected an integer 1-65535 or an IANA port name, got \"80x\""
        );
    }

    #[test]
    fn display_of_a_file_error_has_only_the_file() {
        let error = ManifestError::file("m/a.yaml", "cannot read: permission denied");
        assert_eq!(
            error.to_string(),
            "m/a.yaml: cannot read: permission denied"
        );
    }

    #[test]
    fn list_prefix_is_prepended() {
        let mut context = Context::new("a.yaml", Some(1));
        context.prefix = "items[3].".into();
        let error = context.problem(Severity::Error, Some("spec.ports"), "x");
        assert_eq!(error.field.as_deref(), Some("items[3].spec.ports"));
        let error = context.problem(Severity::Error, None, "x");
        assert_eq!(error.field.as_deref(), Some("items[3]"));
    }
}
