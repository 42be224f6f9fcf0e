//! Device-management and information-reporting operations, server → device
//! (LwM2M 1.1 Core §6.3, §6.4): what an operator asks for, the CoAP request
//! it becomes, and how the device's response is judged.
//!
//! A CoAP error response is a failure with its code recorded, never a
//! success.

use serde::{Deserialize, Serialize};

use crate::coap::{Code, Method, Request, Response};
use crate::error::{Error, Result};
use crate::lwm2m::content::{self, link_format, senml};
use crate::lwm2m::model::Models;
use crate::lwm2m::path::{Record, ResourcePath};

/// Store row id of an operation.
pub type OperationId = i64;

/// A value to write, given as text and typed with the object model when the
/// request is built (Core §7.4.1 text forms; opaque as hex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WriteValue {
    pub path: ResourcePath,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum OperationKind {
    Read {
        path: ResourcePath,
    },
    /// Write (Core §6.3.3). `replace`: `true` Write-Replace (PUT), `false`
    /// Partial Update (POST, an object instance only), absent what the path
    /// allows: Partial Update for an instance, Replace for a resource.
    Write {
        path: ResourcePath,
        values: Vec<WriteValue>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replace: Option<bool>,
    },
    /// Write-Composite (Core 1.1 §6.3.3): resources of several objects in one
    /// iPATCH on the root.
    WriteComposite {
        values: Vec<WriteValue>,
    },
    Execute {
        path: ResourcePath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<String>,
    },
    Create {
        path: ResourcePath,
        values: Vec<WriteValue>,
    },
    Delete {
        path: ResourcePath,
    },
    Discover {
        path: ResourcePath,
    },
    /// `attributes` as Uri-Query items, e.g. `pmin=10`, `pmax=60` (Core §5.1.2).
    WriteAttributes {
        path: ResourcePath,
        attributes: Vec<String>,
    },
    Observe {
        path: ResourcePath,
    },
    CancelObserve {
        path: ResourcePath,
    },
    ReadComposite {
        paths: Vec<ResourcePath>,
    },
    ObserveComposite {
        paths: Vec<ResourcePath>,
    },
    CancelObserveComposite {
        paths: Vec<ResourcePath>,
    },
}

/// How a Write goes out: Write-Replace is a PUT, Partial Update a POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Replace,
    PartialUpdate,
}

/// The method a Write on `path` must use. LwM2M maps a POST on a resource
/// path to Execute (LwM2M 1.0.1 TS table 25, "Operation to CoAP method";
/// the 1.1 Transport Bindings TS keeps it for the Device Management and
/// Service Enablement interface), and Zephyr's engine (`lwm2m_message_handling.c`,
/// `handle_request`) does exactly that: a POST on three or more levels is
/// Execute, on two (an Object Instance) Partial Update, on one Create. So
/// Partial Update exists only for an Object Instance; a resource or resource
/// instance is always written with a Replace. `replace` is the operator's
/// choice, `None` takes what the path allows (Partial Update for an
/// instance, which leaves the other resources alone).
pub fn write_method(path: &ResourcePath, replace: Option<bool>) -> Result<WriteMode> {
    match (path.depth(), replace) {
        (2, Some(true)) => Ok(WriteMode::Replace),
        (2, _) => Ok(WriteMode::PartialUpdate),
        (3 | 4, Some(false)) => Err(Error::Invalid {
            what: "write",
            reason: format!(
                "Partial Update exists only for an Object Instance (/O/I); on the resource path {path} \
                 a POST is an Execute (LwM2M's operation-to-CoAP mapping); write it with Replace"
            ),
        }),
        (3 | 4, _) => Ok(WriteMode::Replace),
        _ => Err(Error::Invalid {
            what: "write",
            reason: format!(
                "Write targets an Object Instance, a Resource or a Resource Instance, not {path} \
                 (LwM2M Core §6.3.3)"
            ),
        }),
    }
}

impl OperationKind {
    pub fn name(&self) -> &'static str {
        match self {
            OperationKind::Read { .. } => "read",
            OperationKind::Write { .. } => "write",
            OperationKind::Execute { .. } => "execute",
            OperationKind::Create { .. } => "create",
            OperationKind::Delete { .. } => "delete",
            OperationKind::Discover { .. } => "discover",
            OperationKind::WriteAttributes { .. } => "write-attributes",
            OperationKind::Observe { .. } => "observe",
            OperationKind::CancelObserve { .. } => "cancel-observe",
            OperationKind::ReadComposite { .. } => "read-composite",
            OperationKind::ObserveComposite { .. } => "observe-composite",
            OperationKind::WriteComposite { .. } => "write-composite",
            OperationKind::CancelObserveComposite { .. } => "cancel-observe-composite",
        }
    }

    /// The main path, for display and for matching observations.
    pub fn path(&self) -> ResourcePath {
        match self {
            OperationKind::Read { path }
            | OperationKind::Write { path, .. }
            | OperationKind::Execute { path, .. }
            | OperationKind::Create { path, .. }
            | OperationKind::Delete { path }
            | OperationKind::Discover { path }
            | OperationKind::WriteAttributes { path, .. }
            | OperationKind::Observe { path }
            | OperationKind::CancelObserve { path } => *path,
            OperationKind::ReadComposite { .. }
            | OperationKind::ObserveComposite { .. }
            | OperationKind::CancelObserveComposite { .. }
            | OperationKind::WriteComposite { .. } => ResourcePath::ROOT,
        }
    }

    /// Reject requests that can never be valid, before they are queued.
    pub fn validate(&self, models: &Models) -> Result<()> {
        let need = |p: &ResourcePath, min: usize, max: usize| {
            if p.depth() < min || p.depth() > max {
                Err(Error::InvalidPath(format!(
                    "{p} (this operation needs {min} to {max} levels)"
                )))
            } else {
                Ok(())
            }
        };
        match self {
            OperationKind::Read { path } | OperationKind::Observe { path } | OperationKind::CancelObserve { path } => {
                need(path, 1, 4)
            }
            OperationKind::Discover { path } | OperationKind::WriteAttributes { path, .. } => need(path, 1, 3),
            OperationKind::Write { path, values, replace } => {
                write_method(path, *replace)?;
                if values.is_empty() {
                    return Err(Error::malformed("write", "no values"));
                }
                self.records(models).map(|_| ())
            }
            OperationKind::WriteComposite { values } => {
                if values.is_empty() {
                    return Err(Error::malformed("write-composite", "no values"));
                }
                self.records(models).map(|_| ())
            }
            OperationKind::Execute { path, .. } => need(path, 3, 3),
            OperationKind::Create { path, .. } => need(path, 1, 1).and_then(|_| self.records(models).map(|_| ())),
            OperationKind::Delete { path } => need(path, 2, 2),
            OperationKind::ReadComposite { paths }
            | OperationKind::ObserveComposite { paths }
            | OperationKind::CancelObserveComposite { paths } => {
                if paths.is_empty() {
                    return Err(Error::malformed("composite", "no paths"));
                }
                Ok(())
            }
        }
    }

    fn records(&self, models: &Models) -> Result<Vec<Record>> {
        let (base, values) = match self {
            OperationKind::Write { path, values, .. } | OperationKind::Create { path, values } => (path, values),
            OperationKind::WriteComposite { values } => (&ResourcePath::ROOT, values),
            _ => return Ok(Vec::new()),
        };
        values
            .iter()
            .map(|v| {
                if !v.path.starts_with(base) || v.path.depth() < 3 {
                    return Err(Error::InvalidPath(format!("{} is not a resource below {base}", v.path)));
                }
                let rtype = models.resource(&v.path).map(|r| r.rtype);
                Ok(Record {
                    path: v.path,
                    value: content::parse_text(&v.value, rtype)?,
                    time: None,
                })
            })
            .collect()
    }

    /// The CoAP request for this operation. `format` is the registration's
    /// preferred content format; `root` its root path segments.
    pub fn to_request(&self, format: u16, root: &[String], models: &Models) -> Result<Request> {
        // The method, path and Accept of each operation follow LwM2M's
        // operation-to-CoAP mapping (1.0.1 TS table 25; the 1.1 Transport
        // Bindings TS adds the composite operations): the table in
        // docs/operations.md, tested row by row in lwm2m::conformance_tests.
        let path = self.path();
        let (method, accept) = match self {
            OperationKind::Read { .. } | OperationKind::Observe { .. } | OperationKind::CancelObserve { .. } => {
                (Method::Get, Some(format))
            }
            OperationKind::Discover { .. } => (Method::Get, Some(content::LINK_FORMAT)),
            OperationKind::Write { path, replace, .. } => match write_method(path, *replace)? {
                WriteMode::Replace => (Method::Put, None),
                WriteMode::PartialUpdate => (Method::Post, None),
            },
            OperationKind::Execute { .. } | OperationKind::Create { .. } => (Method::Post, None),
            OperationKind::Delete { .. } => (Method::Delete, None),
            // A PUT without Content-Format is Write-Attributes; with one it is
            // a Write (Zephyr's `handle_request` tells them apart this way).
            OperationKind::WriteAttributes { .. } => (Method::Put, None),
            OperationKind::WriteComposite { .. } => (Method::IPatch, None),
            OperationKind::ReadComposite { .. }
            | OperationKind::ObserveComposite { .. }
            | OperationKind::CancelObserveComposite { .. } => (Method::Fetch, Some(composite_format(format))),
        };
        let mut segments = root.to_vec();
        segments.extend(path.segments());
        let mut req = Request::new(method, "");
        req.options.uri_path = segments;
        req.options.accept = accept;
        // RFC 7641 §2: Observe 0 registers, 1 deregisters (§3.6, sent on
        // the observation's own token by the server core).
        match self {
            OperationKind::Observe { .. } | OperationKind::ObserveComposite { .. } => req.options.observe = Some(0),
            OperationKind::CancelObserve { .. } | OperationKind::CancelObserveComposite { .. } => {
                req.options.observe = Some(1)
            }
            _ => {}
        }
        match self {
            OperationKind::Write { path, .. } | OperationKind::Create { path, .. } => {
                let records = self.records(models)?;
                // A single resource can go as text/plain to 1.0 clients that
                // prefer it; multi-value writes need a structured format.
                let wf = if content::ENCODABLE.contains(&format) {
                    format
                } else {
                    content::TLV
                };
                req.payload = content::encode(wf, path, &records, models)?;
                req.options.content_format = Some(wf);
            }
            OperationKind::Execute { args: Some(a), .. } => {
                req.payload = a.as_bytes().to_vec();
                req.options.content_format = Some(content::TEXT_PLAIN);
            }
            OperationKind::WriteComposite { .. } => {
                // Composite operations carry SenML with full names (Core §7.4.4).
                let cf = composite_format(format);
                req.payload = content::encode(cf, &ResourcePath::ROOT, &self.records(models)?, models)?;
                req.options.content_format = Some(cf);
            }
            OperationKind::WriteAttributes { attributes, .. } => req.options.uri_query = attributes.clone(),
            OperationKind::ReadComposite { paths }
            | OperationKind::ObserveComposite { paths }
            | OperationKind::CancelObserveComposite { paths } => {
                let cf = composite_format(format);
                req.payload = if cf == content::SENML_JSON {
                    senml::encode_json_names(paths)
                } else {
                    senml::encode_cbor_names(paths)
                };
                req.options.content_format = Some(cf);
            }
            _ => {}
        }
        Ok(req)
    }

    /// The response code that means success for this operation (Core §6.3).
    pub fn expected(&self) -> &'static [Code] {
        match self {
            OperationKind::Read { .. }
            | OperationKind::Discover { .. }
            | OperationKind::Observe { .. }
            | OperationKind::CancelObserve { .. }
            | OperationKind::ReadComposite { .. }
            | OperationKind::ObserveComposite { .. }
            | OperationKind::CancelObserveComposite { .. } => &[Code::CONTENT],
            OperationKind::Write { .. }
            | OperationKind::WriteComposite { .. }
            | OperationKind::Execute { .. }
            | OperationKind::WriteAttributes { .. } => &[Code::CHANGED],
            OperationKind::Create { .. } => &[Code::CREATED],
            OperationKind::Delete { .. } => &[Code::DELETED],
        }
    }

    /// Judge the device's response.
    pub fn outcome(&self, response: &Response, models: &Models) -> Outcome {
        let code = response.code;
        if !self.expected().contains(&code) {
            return Outcome::Failed {
                code: Some(code.to_string()),
                reason: if code.is_success() {
                    format!("unexpected response {code}")
                } else {
                    format!("device answered {code}")
                },
            };
        }
        let mut result = OperationResult {
            code: code.to_string(),
            ..Default::default()
        };
        match self {
            OperationKind::Discover { .. } => {
                let text = String::from_utf8_lossy(&response.payload).into_owned();
                if let Err(e) = link_format::parse(&text) {
                    return Outcome::Failed {
                        code: Some(code.to_string()),
                        reason: e.to_string(),
                    };
                }
                result.links = Some(text);
            }
            OperationKind::Read { path } | OperationKind::Observe { path } | OperationKind::CancelObserve { path } => {
                match decode_response(path, response, models) {
                    Ok(r) => result.records = r,
                    Err(e) => {
                        return Outcome::Failed {
                            code: Some(code.to_string()),
                            reason: e.to_string(),
                        };
                    }
                }
            }
            OperationKind::ReadComposite { .. }
            | OperationKind::ObserveComposite { .. }
            | OperationKind::CancelObserveComposite { .. } => {
                match decode_response(&ResourcePath::ROOT, response, models) {
                    Ok(r) => result.records = r,
                    Err(e) => {
                        return Outcome::Failed {
                            code: Some(code.to_string()),
                            reason: e.to_string(),
                        };
                    }
                }
            }
            OperationKind::Create { .. } => result.location = response.options.location_path.last().cloned(),
            _ => {}
        }
        Outcome::Succeeded(result)
    }
}

/// Composite operations need SenML (Core §6.3.3): use the client's SenML
/// flavour, SenML-CBOR otherwise.
fn composite_format(preferred: u16) -> u16 {
    if preferred == content::SENML_JSON {
        content::SENML_JSON
    } else {
        content::SENML_CBOR
    }
}

/// Decode a response payload for `path`; an absent Content-Format means
/// text/plain for a single resource (Core §7.4: the default format).
pub fn decode_response(path: &ResourcePath, response: &Response, models: &Models) -> Result<Vec<Record>> {
    if response.payload.is_empty() {
        return Ok(Vec::new());
    }
    let cf = response.options.content_format.unwrap_or(content::TEXT_PLAIN);
    content::decode(cf, path, &response.payload, models)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OperationResult {
    /// The device's CoAP response code, e.g. "2.05".
    pub code: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
    /// Location of a created instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Outcome {
    Succeeded(OperationResult),
    Failed {
        /// The device's CoAP response code, if it answered at all.
        code: Option<String>,
        reason: String,
    },
    Expired,
    Cancelled,
}

impl Outcome {
    pub fn state(&self) -> OperationState {
        match self {
            Outcome::Succeeded(_) => OperationState::Succeeded,
            Outcome::Failed { .. } => OperationState::Failed,
            Outcome::Expired => OperationState::Expired,
            Outcome::Cancelled => OperationState::Cancelled,
        }
    }
}

/// The life of an operation: queued → sent → succeeded | failed, or
/// expired / cancelled before it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    Queued,
    Sent,
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Queued => "queued",
            OperationState::Sent => "sent",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
            OperationState::Expired => "expired",
            OperationState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<OperationState> {
        Some(match s {
            "queued" => OperationState::Queued,
            "sent" => OperationState::Sent,
            "succeeded" => OperationState::Succeeded,
            "failed" => OperationState::Failed,
            "expired" => OperationState::Expired,
            "cancelled" => OperationState::Cancelled,
            _ => return None,
        })
    }
    pub fn is_final(self) -> bool {
        !matches!(self, OperationState::Queued | OperationState::Sent)
    }
}

/// A queued operation as the server core holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: OperationId,
    pub endpoint: String,
    pub kind: OperationKind,
    /// Unix milliseconds after which it is no longer sent.
    pub deadline: i64,
    pub attempts: u32,
    pub max_attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ResourcePath {
        s.parse().unwrap()
    }

    #[test]
    fn requests() {
        let m = Models::embedded();
        let read = OperationKind::Read { path: p("/3/0/9") }
            .to_request(content::SENML_CBOR, &[], &m)
            .unwrap();
        assert_eq!(read.method, Method::Get);
        assert_eq!(read.path(), "/3/0/9");
        assert_eq!(read.options.accept, Some(content::SENML_CBOR));

        let write = OperationKind::Write {
            path: p("/1/0"),
            values: vec![WriteValue {
                path: p("/1/0/1"),
                value: "600".into(),
            }],
            replace: None,
        };
        let req = write.to_request(content::TLV, &["lwm2m".into()], &m).unwrap();
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.path(), "/lwm2m/1/0");
        assert_eq!(req.options.content_format, Some(content::TLV));
        assert_eq!(
            content::tlv::decode(&p("/1/0"), &req.payload, &m).unwrap()[0].value,
            crate::lwm2m::Value::Integer(600)
        );

        let exec = OperationKind::Execute {
            path: p("/3/0/4"),
            args: Some("0='x'".into()),
        }
        .to_request(112, &[], &m)
        .unwrap();
        assert_eq!(exec.payload, b"0='x'");
        let obs = OperationKind::Observe {
            path: p("/3303/0/5700"),
        }
        .to_request(112, &[], &m)
        .unwrap();
        assert_eq!(obs.options.observe, Some(0));
        let comp = OperationKind::ReadComposite {
            paths: vec![p("/3/0/9"), p("/3303/0")],
        }
        .to_request(112, &[], &m)
        .unwrap();
        assert_eq!(comp.method, Method::Fetch);
        assert_eq!(senml::names(112, &comp.payload).unwrap().len(), 2);
    }

    #[test]
    fn validation() {
        let m = Models::embedded();
        assert!(
            OperationKind::Execute {
                path: p("/3/0"),
                args: None
            }
            .validate(&m)
            .is_err()
        );
        assert!(OperationKind::Delete { path: p("/3/0/1") }.validate(&m).is_err());
        let bad_value = OperationKind::Write {
            path: p("/3/0/13"),
            values: vec![WriteValue {
                path: p("/3/0/13"),
                value: "noon".into(),
            }],
            replace: None,
        };
        assert!(bad_value.validate(&m).unwrap_err().to_string().contains("noon"));
        let outside = OperationKind::Write {
            path: p("/3/0"),
            values: vec![WriteValue {
                path: p("/1/0/1"),
                value: "1".into(),
            }],
            replace: None,
        };
        assert!(outside.validate(&m).is_err());
    }

    #[test]
    fn error_codes_are_failures() {
        let m = Models::embedded();
        let op = OperationKind::Write {
            path: p("/3/0/13"),
            values: vec![WriteValue {
                path: p("/3/0/13"),
                value: "5".into(),
            }],
            replace: None,
        };
        match op.outcome(&Response::new(Code::METHOD_NOT_ALLOWED), &m) {
            Outcome::Failed { code, .. } => assert_eq!(code.as_deref(), Some("4.05")),
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            op.outcome(&Response::new(Code::CHANGED), &m),
            Outcome::Succeeded(_)
        ));
        // A success code that is not the one Write answers with is not success either.
        assert!(matches!(
            op.outcome(&Response::new(Code::CONTENT), &m),
            Outcome::Failed { .. }
        ));
        let read = OperationKind::Read { path: p("/3/0/9") };
        let ok = read.outcome(
            &Response::with_payload(Code::CONTENT, content::TEXT_PLAIN, b"87".to_vec()),
            &m,
        );
        match ok {
            Outcome::Succeeded(r) => {
                assert_eq!(r.records[0].value, crate::lwm2m::Value::Integer(87))
            }
            o => panic!("{o:?}"),
        }
        let garbage = read.outcome(&Response::with_payload(Code::CONTENT, content::TLV, vec![0xC8]), &m);
        assert!(matches!(garbage, Outcome::Failed { .. }));
    }
}
