use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::AUTHORIZATION;
use http::Request;
use tower::Service;

use super::bearer_token;
use crate::audit::AuditNote;
use crate::rescue::{GatewayError, GatewayResponse};
use crate::tenant::TenantDirectory;

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    pub(super) inner: S,
    pub(super) tenants: Arc<TenantDirectory>,
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
        let tenant = match bearer_token(req.headers()) {
            Ok(token) => self
                .tenants
                .authenticate(token)
                .ok_or(GatewayError::UnknownCredential),
            Err(e) => Err(e),
        };
        let tenant = match tenant {
            Ok(tenant) => tenant,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        if let Some(note) = req.extensions().get::<AuditNote>() {
            note.record(|facts| facts.tenant = Some(tenant.name.clone()));
        }
        // The tenant's token ends here: nothing downstream ever sees it.
        req.headers_mut().remove(AUTHORIZATION);
        req.extensions_mut().insert(tenant);
        Either::Right(self.inner.call(req))
    }
}
