use std::future::{ready, Ready};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::AUTHORIZATION;
use http::Request;
use tower::Service;

use super::bearer_token;
use crate::audit::AuditNote;
use crate::error::{GatewayError, GatewayResponse};
use crate::reload::{SharedSnapshot, Snapshot};
use crate::server::PeerCertificate;
use crate::tenant::{Authenticated, TokenRefusal};

#[derive(Clone)]
pub(crate) struct AuthService<S> {
    pub(super) inner: S,
    pub(super) shared: SharedSnapshot,
}

/// A tenant is identified by its mTLS client certificate, by its token, or by
/// both when they agree.
fn identify<B>(req: &Request<B>, snapshot: &Snapshot) -> Result<Authenticated, GatewayError> {
    let by_cert = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|cert| cert.tenant(snapshot));
    if !req.headers().contains_key(AUTHORIZATION) {
        return by_cert
            .map(|tenant| Authenticated {
                tenant,
                token_name: None,
            })
            .ok_or(GatewayError::MissingCredential);
    }
    let by_token = snapshot
        .tenants
        .authenticate(bearer_token(req.headers())?)
        .map_err(|refusal| match refusal {
            TokenRefusal::Unknown => GatewayError::UnknownCredential,
            TokenRefusal::Expired => GatewayError::ExpiredCredential,
        })?;
    match by_cert {
        Some(cert_tenant) if cert_tenant.name != by_token.tenant.name => Err(GatewayError::ConflictingCredentials),
        _ => Ok(by_token),
    }
}

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Either<Ready<Result<GatewayResponse, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // One snapshot per request: the request finishes under the
        // configuration it started with, whatever reloads happen meanwhile.
        let snapshot = self.shared.load_full();
        let Authenticated { tenant, token_name } = match identify(&req, &snapshot) {
            Ok(found) => found,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        if let Some(note) = req.extensions().get::<AuditNote>() {
            note.record(|facts| {
                facts.tenant = Some(tenant.name.clone());
                facts.token_name = token_name;
            });
        }
        // The tenant's token ends here: nothing downstream ever sees it.
        req.headers_mut().remove(AUTHORIZATION);
        req.extensions_mut().insert(tenant);
        req.extensions_mut().insert(snapshot);
        Either::Right(self.inner.call(req))
    }
}
