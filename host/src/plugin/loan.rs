//! What one plugin call borrows from the request it serves.
//!
//! A store's data must be `'static`, so it cannot hold the borrows a call needs: the message
//! the plugin works on, the request's context values and its identity. Moving them into the
//! store for the call and back out after it cost several copies of a ~300-byte view per call
//! (about 1k instructions per request with one plugin). A [`Loan`] holds pointers to them
//! instead, set for exactly one call from borrows that the caller holds throughout the call,
//! and cleared when it returns. Host functions, which run only inside a call, reach the data
//! through the accessors here; this module is the only place that dereferences the pointers.

use std::ptr::NonNull;

use super::host::{Context, RequestInfo, RequestView, ResponseView};

/// The message a call works on.
pub enum Message<'a> {
    Request(&'a mut RequestView),
    Response(&'a mut ResponseView),
}

/// Everything one call borrows.
pub struct Borrowed<'a> {
    pub message: Message<'a>,
    pub ctx: &'a mut Context,
    pub info: Option<&'a RequestInfo>,
}

/// The pointers a store holds: all `None` between calls.
#[derive(Default)]
pub struct Loan {
    request: Option<NonNull<RequestView>>,
    response: Option<NonNull<ResponseView>>,
    ctx: Option<NonNull<Context>>,
    info: Option<NonNull<RequestInfo>>,
}

// SAFETY: the pointers are set only while a call runs, and a call runs on the thread that holds
// the borrows they come from; between calls, when a pooled instance may move to another
// thread, they are all `None`.
unsafe impl Send for Loan {}

impl Loan {
    /// Lends `borrowed` to the store for one call.
    ///
    /// # Safety
    ///
    /// [`Loan::end`] must be called before the borrows in `borrowed` end (or the store dropped
    /// unused), and the caller must not touch the borrowed data in between.
    pub unsafe fn begin(&mut self, borrowed: Borrowed<'_>) {
        let (request, response) = match borrowed.message {
            Message::Request(view) => (Some(NonNull::from(view)), None),
            Message::Response(view) => (None, Some(NonNull::from(view))),
        };
        *self = Loan {
            request,
            response,
            ctx: Some(NonNull::from(borrowed.ctx)),
            info: borrowed.info.map(NonNull::from),
        };
    }

    /// Ends the call's loan.
    pub fn end(&mut self) {
        *self = Loan::default();
    }

    pub fn request(&mut self) -> Option<&mut RequestView> {
        // SAFETY: set by `begin` from a live exclusive borrow that its caller does not use
        // until `end`; the result borrows `self` mutably, so no two exist at once.
        self.request.map(|view| unsafe { &mut *view.as_ptr() })
    }

    pub fn response(&mut self) -> Option<&mut ResponseView> {
        // SAFETY: as for `request`.
        self.response.map(|view| unsafe { &mut *view.as_ptr() })
    }

    pub fn ctx(&mut self) -> Option<&mut Context> {
        // SAFETY: as for `request`.
        self.ctx.map(|ctx| unsafe { &mut *ctx.as_ptr() })
    }

    pub fn info(&self) -> Option<&RequestInfo> {
        // SAFETY: set by `begin` from a live shared borrow.
        self.info.map(|info| unsafe { &*info.as_ptr() })
    }
}
