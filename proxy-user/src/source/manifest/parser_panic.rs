//! A parser library's panic on bad input, caught: that input's error, not the daemon's end.
//!
//! `yaml_serde` 0.10.7 panics on some invalid YAML instead of returning an error: an alias with
//! no anchor inside a sequence (`- *t`) ends in `panic!("unexpected end of mapping")`
//! (`de.rs`), found by the `manifests` fuzz target. Until the library returns an error there,
//! the parse runs under [`catch`], and the panic's message is not printed (it would look like
//! the daemon crashing).

use std::{
    cell::Cell,
    panic::{self, AssertUnwindSafe},
    sync::Once,
};

thread_local! {
    /// Set while a guarded parse runs on this thread: its panics are not reported.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// `parse()`, or `None` if it panicked (silently).
pub(super) fn catch<T>(parse: impl FnOnce() -> T) -> Option<T> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.get() {
                report(info);
            }
        }));
    });
    let was = QUIET.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(parse));
    QUIET.set(was);
    result.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_none_and_other_panics_still_unwind_as_before() {
        assert_eq!(catch(|| 7), Some(7));
        assert_eq!(catch(|| -> u8 { panic!("a parser bug") }), None);
        // Outside `catch` the hook reports as it did (the test harness sees this one).
        assert!(panic::catch_unwind(|| panic!("not guarded")).is_err());
    }
}
