//! The actix middleware that counts client requests and times them, wrapped around every
//! route of the client port ([`crate::http::server`]).

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::Error;

use super::ClientOp;

/// Counts every request but `/metrics` by operation and status, with its latency: from
/// when the request reached the app (headers parsed) to when its handler answered. A
/// request whose client went away before the answer is not counted.
///
/// Per request: one classification by string prefix, two clock reads, and the atomic
/// updates of two handles resolved in advance; the future is a plain wrapper, not boxed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountRequests;

impl<S, B> Transform<S, ServiceRequest> for CountRequests
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = Counting<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(Counting { service }))
    }
}

/// [`CountRequests`] around a worker's app.
pub struct Counting<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for Counting<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = Counted<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let op = ClientOp::of(req.method(), req.path());
        Counted {
            answer: self.service.call(req),
            op,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer on its way, counted when it is ready.
    pub struct Counted<F> {
        #[pin]
        answer: F,
        // `None` for a request that is not counted (a scrape), and once counted.
        op: Option<ClientOp>,
        started: Instant,
    }
}

impl<F, B> Future for Counted<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.answer.poll(cx));
        if let Some(op) = this.op.take() {
            // Handlers answer errors as responses; an `Err` is actix's own (it becomes
            // the response its status names).
            let status = match &answer {
                Ok(response) => response.status(),
                Err(e) => e.as_response_error().status_code(),
            };
            super::request(op, status.as_u16(), this.started.elapsed());
        }
        Poll::Ready(answer)
    }
}
