//! Boxes kept per thread for the request future, a request's largest allocation (about
//! 5 KiB, past the sizes glibc's per-thread cache serves): with many requests in flight,
//! glibc serves it from its bins, which cost about 450 instructions a request to allocate
//! and free (see bench/README.md). A box kept here costs a thread-local push and pop.
//!
//! Only boxes of one layout are kept, the first one given back; an idle connection holds
//! none, so that idle memory does not grow.

use std::alloc::Layout;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::ptr::NonNull;

/// As many as requests in flight at once on a busy core take turns with.
const KEPT: usize = 256;

thread_local! {
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            layout: None,
            blocks: Vec::new(),
        })
    };
}

/// Memory of boxes whose value was dropped, all allocated by the global allocator with
/// `layout`, and owned by nothing else.
struct Spare {
    layout: Option<Layout>,
    blocks: Vec<NonNull<u8>>,
}

impl Drop for Spare {
    fn drop(&mut self) {
        let Some(layout) = self.layout else {
            return;
        };
        for block in self.blocks.drain(..) {
            // SAFETY: every block was allocated by the global allocator with `layout`, and
            // is owned by the list alone (see `Spare`).
            unsafe { std::alloc::dealloc(block.as_ptr(), layout) }
        }
    }
}

/// Room for an `F`: a kept box of its layout if this thread has one, else a new one.
pub fn take<F>() -> Box<MaybeUninit<F>> {
    let layout = Layout::new::<F>();
    let kept = SPARE
        .try_with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            (spare.layout == Some(layout))
                .then(|| spare.blocks.pop())
                .flatten()
        })
        .ok()
        .flatten();
    match kept {
        // SAFETY: the block was allocated by the global allocator with the layout of
        // `MaybeUninit<F>` (that of `F`), as `Box` allocates, and nothing else owns it.
        Some(block) => unsafe { Box::from_raw(block.cast::<MaybeUninit<F>>().as_ptr()) },
        None => Box::new_uninit(),
    }
}

/// Drops the value of `pinned` in place and keeps its box for a later [`take`] on this
/// thread (or frees it when this thread keeps enough, or boxes of another layout).
pub fn give<F>(pinned: Pin<Box<F>>) {
    // SAFETY: the value is dropped where it is, never moved out of its pinned place; what
    // is left is the box's memory, which `MaybeUninit` says holds no value.
    let block = unsafe {
        let raw = Box::into_raw(Pin::into_inner_unchecked(pinned));
        std::ptr::drop_in_place(raw);
        Box::from_raw(raw.cast::<MaybeUninit<F>>())
    };
    let layout = Layout::new::<F>();
    if layout.size() == 0 {
        return;
    }
    // A block not kept is freed with the closure that owns it.
    let _ = SPARE.try_with(move |spare| {
        let Ok(mut spare) = spare.try_borrow_mut() else {
            return;
        };
        if *spare.layout.get_or_insert(layout) == layout && spare.blocks.len() < KEPT {
            spare.blocks.push(NonNull::from(Box::leak(block)).cast());
        }
    });
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    /// A value of the request future's size that counts its drops.
    struct Counted(#[allow(dead_code)] Rc<()>, [u64; 64]);

    #[test]
    fn a_given_box_is_taken_again_with_its_value_dropped_once() {
        let drops = Rc::new(());
        let first = Box::into_pin(Box::write(take(), Counted(drops.clone(), [7; 64])));
        let place = &*first as *const Counted as usize;
        give(first);
        assert_eq!(Rc::strong_count(&drops), 1, "the value was dropped");

        let again = Box::into_pin(Box::write(take(), Counted(drops.clone(), [8; 64])));
        assert_eq!(&*again as *const Counted as usize, place, "the same memory");
        assert_eq!(again.1[63], 8);
        give(again);
        assert_eq!(Rc::strong_count(&drops), 1);
    }

    #[test]
    fn boxes_of_another_layout_are_not_kept_or_served() {
        give(Box::pin([1u64; 64]));
        // A new box for another layout; one given back is freed, not kept.
        let other = Box::into_pin(Box::write(take::<[u8; 3]>(), [1, 2, 3]));
        assert_eq!(*other, [1, 2, 3]);
        give(other);
        let kept = SPARE.with(|spare| {
            let spare = spare.borrow();
            (spare.layout, spare.blocks.len())
        });
        assert_eq!(kept, (Some(Layout::new::<[u64; 64]>()), 1));
    }
}
