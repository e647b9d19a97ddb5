//! Boxes kept per thread for what each request allocates and frees again: its future, its
//! head, the upstream answer's body and fields. glibc's per-thread cache holds 7 chunks of
//! a size, and none past 1 KiB (the request future is about 4 KiB), so with many requests
//! in flight these came from glibc's bins, at 150–450 instructions each to allocate and
//! free (see bench/README.md). A box kept here costs a thread-local push and pop, the way
//! HAProxy keeps a pool per kind of object.
//!
//! Boxes of a few layouts are kept, up to [`KEPT`] of each; an idle connection holds none,
//! so idle memory does not grow.

use std::alloc::Layout;
use std::cell::RefCell;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::ptr::NonNull;

/// As many as requests in flight at once on a busy core take turns with.
const KEPT: usize = 256;
/// Kinds of box kept; boxes of further layouts are freed as usual.
const LAYOUTS: usize = 6;

thread_local! {
    static SPARE: RefCell<Vec<List>> = const { RefCell::new(Vec::new()) };
}

/// Memory of boxes whose value was dropped, all allocated by the global allocator with
/// `layout`, and owned by the list alone.
struct List {
    layout: Layout,
    blocks: Vec<NonNull<u8>>,
}

impl Drop for List {
    fn drop(&mut self) {
        for block in self.blocks.drain(..) {
            // SAFETY: every block was allocated by the global allocator with `layout`, and
            // is owned by the list alone (see `List`).
            unsafe { std::alloc::dealloc(block.as_ptr(), self.layout) }
        }
    }
}

/// Room for a `T`: a kept box of its layout if this thread has one, else a new one.
pub fn take<T>() -> Box<MaybeUninit<T>> {
    let layout = Layout::new::<T>();
    let kept = SPARE
        .try_with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            let list = spare.iter_mut().find(|list| list.layout == layout)?;
            list.blocks.pop()
        })
        .ok()
        .flatten();
    match kept {
        // SAFETY: the block was allocated by the global allocator with the layout of
        // `MaybeUninit<T>` (that of `T`), as `Box` allocates, and nothing else owns it.
        Some(block) => unsafe { Box::from_raw(block.cast::<MaybeUninit<T>>().as_ptr()) },
        None => Box::new_uninit(),
    }
}

/// Keeps the memory of `block`, whose value is gone, for a later [`take`] on this thread;
/// frees it when this thread keeps enough of its layout, or enough layouts.
fn keep<T>(block: Box<MaybeUninit<T>>) {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        return;
    }
    // A block not kept is freed with the closure that owns it.
    let _ = SPARE.try_with(move |spare| {
        let Ok(mut spare) = spare.try_borrow_mut() else {
            return;
        };
        let at = match spare.iter().position(|list| list.layout == layout) {
            Some(at) => at,
            None if spare.len() < LAYOUTS => {
                spare.push(List {
                    layout,
                    blocks: Vec::new(),
                });
                spare.len() - 1
            }
            None => return,
        };
        let list = &mut spare[at];
        if list.blocks.len() < KEPT {
            list.blocks.push(NonNull::from(Box::leak(block)).cast());
        }
    });
}

/// Drops the value of `boxed` in place and keeps its memory.
fn drop_and_keep<T>(boxed: Box<T>) {
    let raw = Box::into_raw(boxed);
    // SAFETY: `raw` is the box's own, its value dropped once, where it is; what is left is
    // the box's memory, which `MaybeUninit` says holds no value.
    let block = unsafe {
        std::ptr::drop_in_place(raw);
        Box::from_raw(raw.cast::<MaybeUninit<T>>())
    };
    keep(block);
}

/// Drops the value of `pinned` in place (never moving it, as its pin asks) and keeps its
/// box for a later [`take`] on this thread.
pub fn give<F>(pinned: Pin<Box<F>>) {
    // SAFETY: the value is dropped where it is, not moved out of its pinned place.
    drop_and_keep(unsafe { Pin::into_inner_unchecked(pinned) });
}

/// A box whose memory goes back to this thread's spare boxes when it is dropped.
pub struct Kept<T>(ManuallyDrop<Box<T>>);

impl<T> Kept<T> {
    /// `value` in a kept box.
    #[inline(always)]
    pub fn new(value: T) -> Kept<T> {
        Kept(ManuallyDrop::new(Box::write(take(), value)))
    }

    /// The value, out of its box, whose memory is kept.
    pub fn into_inner(this: Kept<T>) -> T {
        let mut this = ManuallyDrop::new(this);
        // SAFETY: the box is taken once, and `this` is never dropped.
        let raw = Box::into_raw(unsafe { ManuallyDrop::take(&mut this.0) });
        // SAFETY: the value is read out once; the memory left is the box's, uninitialized
        // from then on, as `MaybeUninit` says.
        let (value, block) = unsafe { (raw.read(), Box::from_raw(raw.cast::<MaybeUninit<T>>())) };
        keep(block);
        value
    }
}

impl<T> Drop for Kept<T> {
    fn drop(&mut self) {
        // SAFETY: the box is taken once, here, as the value goes.
        drop_and_keep(unsafe { ManuallyDrop::take(&mut self.0) });
    }
}

impl<T> Deref for Kept<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Kept<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Clone> Clone for Kept<T> {
    fn clone(&self) -> Kept<T> {
        Kept::new(T::clone(self))
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Kept<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        T::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    /// A value of some size that counts its drops.
    struct Counted(#[allow(dead_code)] Rc<()>, [u64; 64]);

    fn kept(layout: Layout) -> Option<usize> {
        SPARE.with(|spare| {
            let spare = spare.borrow();
            let list = spare.iter().find(|list| list.layout == layout)?;
            Some(list.blocks.len())
        })
    }

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
        assert_eq!(kept(Layout::new::<Counted>()), Some(1));
    }

    #[test]
    fn a_kept_value_is_dropped_or_moved_out_once_and_its_memory_kept() {
        let drops = Rc::new(());
        let value = Kept::new(Counted(drops.clone(), [1; 64]));
        assert_eq!(value.1[0], 1);
        drop(value);
        assert_eq!(Rc::strong_count(&drops), 1);

        let value = Kept::new(Counted(drops.clone(), [2; 64]));
        let out = Kept::into_inner(value);
        assert_eq!(
            (Rc::strong_count(&drops), out.1[0]),
            (2, 2),
            "moved out, not dropped"
        );
        drop(out);
        assert_eq!(Rc::strong_count(&drops), 1);
        assert_eq!(
            kept(Layout::new::<Counted>()),
            Some(1),
            "one box, used twice"
        );
    }

    #[test]
    fn boxes_of_more_layouts_than_kept_are_freed() {
        give(Box::pin([1u8; 1]));
        give(Box::pin([1u8; 2]));
        give(Box::pin([1u8; 3]));
        give(Box::pin([1u8; 4]));
        give(Box::pin([1u8; 5]));
        give(Box::pin([1u8; 6]));
        give(Box::pin([1u8; 7]));
        assert_eq!(kept(Layout::new::<[u8; 6]>()), Some(1));
        assert_eq!(kept(Layout::new::<[u8; 7]>()), None);
        let other = Kept::new([1u8, 2, 3, 4, 5, 6, 7]);
        assert_eq!(*other, [1, 2, 3, 4, 5, 6, 7]);
    }
}
