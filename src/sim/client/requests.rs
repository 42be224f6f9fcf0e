//! The simulated client's side of the Device Management and Service
//! Enablement interface (Core §6.3, §6.4), as strict as Zephyr's LwM2M
//! engine: the method and the path's depth decide the operation, and a
//! request for an operation the target does not allow fails with the code
//! Zephyr answers, so a server that sends the wrong request is caught here
//! and not first by a device in the field.

use std::time::{Duration, Instant};

use super::{Client, Observer, SECURITY, path};
use crate::coap::{Code, Method, Request, Response};
use crate::lwm2m::content::{self, link_format::Link, senml};
use crate::lwm2m::model::ResourceType;
use crate::lwm2m::path::{Record, ResourcePath, Value};

/// Formats the client reads in requests (Zephyr's `select_reader`).
const READABLE: &[u16] = &[
    content::TEXT_PLAIN,
    content::OPAQUE,
    content::CBOR,
    content::TLV,
    content::SENML_JSON,
    content::SENML_CBOR,
    content::LWM2M_CBOR,
];

/// Structured formats the client answers Reads in (Zephyr's `select_writer`
/// less the legacy JSON).
const STRUCTURED: &[u16] = &[
    content::TLV,
    content::SENML_CBOR,
    content::SENML_JSON,
    content::LWM2M_CBOR,
];

/// Is `v` a value of the model's type? A client stores typed values; a
/// string written to an integer resource is a 4.00.
fn value_fits(t: ResourceType, v: &Value) -> bool {
    match t {
        ResourceType::Integer => matches!(v, Value::Integer(_)),
        ResourceType::UnsignedInteger => matches!(v, Value::Unsigned(_) | Value::Integer(0..)),
        ResourceType::Float => matches!(v, Value::Float(_) | Value::Integer(_)),
        ResourceType::Boolean => matches!(v, Value::Boolean(_)),
        ResourceType::Time => matches!(v, Value::Time(_) | Value::Integer(_)),
        ResourceType::Opaque => matches!(v, Value::Opaque(_)),
        ResourceType::Objlnk => matches!(v, Value::ObjectLink(..)),
        ResourceType::String | ResourceType::Corelnk => matches!(v, Value::String(_) | Value::CoreLink(_)),
        ResourceType::None => true,
    }
}

impl Client {
    /// Encode a Read answer in the Accept'ed format, or the client's own
    /// (Zephyr takes SenML-CBOR when a 1.1 request has no Accept).
    fn encode(&self, p: &ResourcePath, records: &[Record], accept: Option<u16>) -> Result<Response, Code> {
        let format = match accept {
            None => self.cfg.format,
            Some(f) if STRUCTURED.contains(&f) => f,
            Some(content::TEXT_PLAIN) if records.len() == 1 && records[0].path == *p => content::TEXT_PLAIN,
            Some(content::OPAQUE) if records.len() == 1 && matches!(records[0].value, Value::Opaque(_)) => {
                content::OPAQUE
            }
            // A format we write but not for this target: RFC 7252 §5.10.4.
            Some(_) => return Err(Code::NOT_ACCEPTABLE),
        };
        let payload = content::encode(format, p, records, &self.models).map_err(|_| Code::INTERNAL_SERVER_ERROR)?;
        Ok(Response::with_payload(Code::CONTENT, format, payload))
    }

    /// Answer a request from the server as Zephyr's LwM2M engine does
    /// (`lwm2m_message_handling.c`, `handle_request`): the method and the
    /// depth of the path decide the operation (a POST on one level is
    /// Create, on two Write (Partial Update), on three or more Execute; a
    /// PUT with a Content-Format is Write, without one Write-Attributes;
    /// FETCH is Read-/Observe-Composite, iPATCH Write-Composite), and a
    /// request for the wrong operation fails instead of being guessed at.
    pub(super) fn serve(&mut self, now: Instant, token: &[u8], req: Request) -> Response {
        self.handle(now, token, req).unwrap_or_else(Response::new)
    }

    fn handle(&mut self, now: Instant, token: &[u8], req: Request) -> Result<Response, Code> {
        // Non-numeric segments name nothing here: 4.04.
        let p = ResourcePath::from_segments(&req.options.uri_path).ok_or(Code::NOT_FOUND)?;
        if let Some(cf) = req.options.content_format
            && !READABLE.contains(&cf)
        {
            return Err(Code::UNSUPPORTED_CONTENT_FORMAT);
        }
        if let Some(accept) = req.options.accept
            && !STRUCTURED.contains(&accept)
            && ![content::TEXT_PLAIN, content::OPAQUE, content::LINK_FORMAT].contains(&accept)
        {
            return Err(Code::NOT_ACCEPTABLE);
        }
        let composite = matches!(req.method, Method::Fetch | Method::IPatch);
        if p.depth() == 0 && !composite {
            // Only the composite operations address the root (Zephyr: EPERM).
            return Err(Code::METHOD_NOT_ALLOWED);
        }
        if p.object() == Some(SECURITY) {
            // A Device Management server has no access to the Security
            // object (Core §6.3: 4.01 Unauthorized).
            return Err(Code::UNAUTHORIZED);
        }
        if !composite && self.models.object(p.object().expect("depth ≥ 1")).is_none() {
            return Err(Code::NOT_FOUND);
        }
        match req.method {
            Method::Get if req.options.accept == Some(content::LINK_FORMAT) => self.discover(&p),
            Method::Get => self.read(token, &p, &req),
            Method::Fetch => self.read_composite(token, &req),
            Method::IPatch => self.write_composite(now, &req),
            Method::Post => match p.depth() {
                1 => self.create(&p, &req),
                2 => self.write(now, &p, &req),
                _ => self.execute(now, &p, &req),
            },
            Method::Put if req.options.content_format.is_none() => self.write_attributes(&p, &req),
            Method::Put if p.depth() >= 2 => self.write(now, &p, &req),
            Method::Delete if p.depth() == 2 => {
                let before = self.values.len();
                self.values.retain(|k, _| !k.starts_with(&p));
                if self.values.len() == before {
                    Err(Code::NOT_FOUND)
                } else {
                    Ok(Response::new(Code::DELETED))
                }
            }
            _ => Err(Code::METHOD_NOT_ALLOWED),
        }
    }

    /// Does the device have this object instance?
    fn has_instance(&self, p: &ResourcePath) -> bool {
        let Some(inst) = ResourcePath::new(&p.ids()[..p.depth().min(2)]) else {
            return false;
        };
        self.values
            .range(inst..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&inst))
    }

    fn read(&mut self, token: &[u8], p: &ResourcePath, req: &Request) -> Result<Response, Code> {
        if p.depth() >= 3 && !self.models.resource(p).is_some_and(|r| r.readable()) {
            // Zephyr checks the R permission of a single resource: EPERM.
            return Err(if self.models.resource(p).is_some() {
                Code::METHOD_NOT_ALLOWED
            } else {
                Code::NOT_FOUND
            });
        }
        let records = self.records_under(p);
        if records.is_empty() {
            return Err(Code::NOT_FOUND);
        }
        let mut r = self.encode(p, &records, req.options.accept)?;
        let format = r.options.content_format.unwrap_or(self.cfg.format);
        self.observe_option(token, req, vec![*p], false, format, &mut r)?;
        Ok(r)
    }

    /// The Observe option of a GET or FETCH (RFC 7641 §2): 0 registers an
    /// observer on this token (replacing one it had), 1 deregisters it.
    fn observe_option(
        &mut self,
        token: &[u8],
        req: &Request,
        paths: Vec<ResourcePath>,
        composite: bool,
        format: u16,
        response: &mut Response,
    ) -> Result<(), Code> {
        match req.options.observe {
            Some(0) => {
                self.observers.retain(|o| o.token != token);
                self.observers.push(Observer {
                    token: token.to_vec(),
                    paths,
                    composite,
                    seq: 0,
                    format,
                });
                response.options.observe = Some(0);
            }
            Some(1) => self.observers.retain(|o| o.token != token),
            Some(_) => return Err(Code::BAD_REQUEST),
            None => {}
        }
        Ok(())
    }

    fn discover(&self, p: &ResourcePath) -> Result<Response, Code> {
        let mut links = Vec::new();
        let mut last = None;
        for k in self.values.keys().filter(|k| k.starts_with(p)) {
            let res = ResourcePath::new(&k.ids()[..3.min(k.depth())]).expect("prefix");
            if last != Some(res) {
                links.push(Link {
                    target: res.to_string(),
                    attrs: vec![],
                });
                last = Some(res);
            }
        }
        if links.is_empty() {
            return Err(Code::NOT_FOUND);
        }
        let text = content::link_format::format(&links);
        Ok(Response::with_payload(
            Code::CONTENT,
            content::LINK_FORMAT,
            text.into_bytes(),
        ))
    }

    /// Check records a Write would store: each below `base`, of a resource
    /// the model knows (4.04 otherwise) and allows writing (4.05, Zephyr's
    /// EPERM), in an instance the device has (4.04), typed as the model
    /// says (4.00).
    fn check_writes(&self, base: &ResourcePath, records: &[Record]) -> Result<(), Code> {
        if records.is_empty() {
            return Err(Code::BAD_REQUEST);
        }
        for r in records {
            if !r.path.starts_with(base) || r.path.depth() < 3 {
                return Err(Code::BAD_REQUEST);
            }
            let Some(m) = self.models.resource(&r.path) else {
                return Err(Code::NOT_FOUND);
            };
            if !self.has_instance(&r.path) {
                return Err(Code::NOT_FOUND);
            }
            if !m.writable() {
                return Err(Code::METHOD_NOT_ALLOWED);
            }
            if !value_fits(m.rtype, &r.value) {
                return Err(Code::BAD_REQUEST);
            }
        }
        Ok(())
    }

    fn decode_request(&self, base: &ResourcePath, req: &Request) -> Result<Vec<Record>, Code> {
        let cf = req.options.content_format.unwrap_or(content::TEXT_PLAIN);
        content::decode(cf, base, &req.payload, &self.models).map_err(|e| match e {
            crate::Error::UnsupportedContentFormat(_) => Code::UNSUPPORTED_CONTENT_FORMAT,
            _ => Code::BAD_REQUEST,
        })
    }

    fn write(&mut self, now: Instant, p: &ResourcePath, req: &Request) -> Result<Response, Code> {
        if !self.has_instance(p) {
            return Err(Code::NOT_FOUND);
        }
        let records = self.decode_request(p, req)?;
        self.check_writes(p, &records)?;
        if req.method == Method::Put && p.depth() == 3 {
            // Write-Replace of a multiple resource replaces all its instances.
            self.values.retain(|k, _| !(k.starts_with(p) && k.depth() == 4));
        }
        self.store_writes(now, records)
    }

    /// Store checked records; a Package URI among them starts (or, empty,
    /// cancels) a firmware download.
    fn store_writes(&mut self, now: Instant, records: Vec<Record>) -> Result<Response, Code> {
        // Package URI: resource 1 of a firmware instance.
        let uris: Vec<(ResourcePath, String)> = records
            .iter()
            .filter(|r| r.path.depth() == 3 && r.path.ids()[2] == 1)
            .filter_map(|r| Some((super::firmware::instance_of(&r.path)?, r.value.to_text())))
            .collect();
        for (base, uri) in &uris {
            self.check_package_uri(base, uri)?;
        }
        for r in records {
            self.values.insert(r.path, r.value);
        }
        for (base, uri) in uris {
            self.package_uri_written(now, &base, &uri);
        }
        Ok(Response::new(Code::CHANGED))
    }

    /// Write-Composite (Core 1.1 §6.3.3): SenML with full names, all or nothing.
    fn write_composite(&mut self, now: Instant, req: &Request) -> Result<Response, Code> {
        if !matches!(
            req.options.content_format,
            Some(content::SENML_CBOR | content::SENML_JSON)
        ) {
            return Err(Code::UNSUPPORTED_CONTENT_FORMAT);
        }
        let records = self.decode_request(&ResourcePath::ROOT, req)?;
        if records.iter().any(|r| r.path.object() == Some(SECURITY)) {
            return Err(Code::UNAUTHORIZED);
        }
        self.check_writes(&ResourcePath::ROOT, &records)?;
        self.store_writes(now, records)
    }

    /// Write-Attributes (Core §5.1.2): known attribute names with numeric
    /// values, or a bare name that clears it.
    fn write_attributes(&mut self, p: &ResourcePath, req: &Request) -> Result<Response, Code> {
        if !req.payload.is_empty() || req.options.uri_query.is_empty() {
            return Err(Code::BAD_REQUEST);
        }
        for q in &req.options.uri_query {
            let (name, value) = q.split_once('=').map_or((q.as_str(), None), |(n, v)| (n, Some(v)));
            let numeric = match name {
                "pmin" | "pmax" | "epmin" | "epmax" => value.is_none_or(|v| v.parse::<u32>().is_ok()),
                "gt" | "lt" | "st" => value.is_none_or(|v| v.parse::<f64>().is_ok_and(f64::is_finite)),
                _ => false,
            };
            if !numeric {
                return Err(Code::BAD_REQUEST);
            }
        }
        if self.records_under(p).is_empty() {
            return Err(Code::NOT_FOUND);
        }
        Ok(Response::new(Code::CHANGED))
    }

    fn execute(&mut self, now: Instant, p: &ResourcePath, req: &Request) -> Result<Response, Code> {
        let Some(m) = self.models.resource(p) else {
            return Err(Code::NOT_FOUND);
        };
        if !self.has_instance(p) {
            return Err(Code::NOT_FOUND);
        }
        if p.depth() != 3 || !m.executable() {
            // Core §6.3.5: Execute targets an executable resource; anything
            // else is 4.05 (Zephyr answers 4.04 for a resource without an
            // execute callback: a failure all the same).
            return Err(Code::METHOD_NOT_ALLOWED);
        }
        if p.ids()[2] == 2
            && let Some(base) = super::firmware::instance_of(p)
        {
            let args = String::from_utf8_lossy(&req.payload).into_owned();
            self.execute_update(now, &base, &args)?;
        }
        if *p == path("/3/0/4") {
            // Reboot: answer, then come back with a fresh registration.
            self.next_register = Some(now + Duration::from_millis(500));
            self.next_update = None;
        }
        Ok(Response::new(Code::CHANGED))
    }

    fn create(&mut self, p: &ResourcePath, req: &Request) -> Result<Response, Code> {
        let object = p.object().expect("depth 1");
        let next = self
            .values
            .keys()
            .filter(|k| k.object() == Some(object))
            .filter_map(|k| k.instance())
            .max()
            .map_or(0, |i| i + 1);
        let base = p.child(next).ok_or(Code::BAD_REQUEST)?;
        let records = self.decode_request(&base, req)?;
        let instance = records.first().and_then(|r| r.path.instance()).unwrap_or(next);
        if self
            .values
            .keys()
            .any(|k| k.object() == Some(object) && k.instance() == Some(instance))
        {
            // Core §6.3.6: the instance exists already.
            return Err(Code::BAD_REQUEST);
        }
        for r in &records {
            if r.path.instance() != Some(instance)
                || !self
                    .models
                    .resource(&r.path)
                    .is_some_and(|m| value_fits(m.rtype, &r.value))
            {
                return Err(Code::BAD_REQUEST);
            }
        }
        for r in records {
            self.values.insert(r.path, r.value);
        }
        let mut r = Response::new(Code::CREATED);
        r.options.location_path = vec![object.to_string(), instance.to_string()];
        Ok(r)
    }

    /// Read-/Observe-Composite (Core 1.1 §6.3.2, §6.4.1): a FETCH of SenML
    /// names; Observe 1 ends the observation on this token.
    fn read_composite(&mut self, token: &[u8], req: &Request) -> Result<Response, Code> {
        let cf = req.options.content_format.ok_or(Code::BAD_REQUEST)?;
        let paths = senml::names(cf, &req.payload).map_err(|_| Code::BAD_REQUEST)?;
        if paths.iter().any(|p| p.object() == Some(SECURITY)) {
            return Err(Code::UNAUTHORIZED);
        }
        let records: Vec<Record> = paths.iter().flat_map(|p| self.records_under(p)).collect();
        let format = req.options.accept.unwrap_or(content::SENML_CBOR);
        let payload = match format {
            content::SENML_CBOR => senml::encode_cbor(&records),
            content::SENML_JSON => senml::encode_json(&records),
            _ => return Err(Code::NOT_ACCEPTABLE),
        };
        let mut r = Response::with_payload(Code::CONTENT, format, payload);
        self.observe_option(token, req, paths, true, format, &mut r)?;
        Ok(r)
    }
}
