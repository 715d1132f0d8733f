//! A loop's slots: connections indexed by a small integer that goes into user data,
//! with a generation per index so that a completion (or a waker, or a timer) of a
//! connection that has since closed is told apart from one of its successor.

use super::SLOTS_MAX;

#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    occupied: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { slots: Vec::new(), generations: Vec::new(), free: Vec::new(), occupied: 0 }
    }
}

impl<T> Slab<T> {
    /// Places `value`, giving its (index, generation); `None` when the loop holds
    /// [`SLOTS_MAX`] slots already (the user data has no room for more).
    pub(crate) fn insert(&mut self, value: T) -> Option<(u32, u32)> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len()).ok().filter(|index| *index < SLOTS_MAX)?;
                self.slots.push(None);
                self.generations.push(0);
                index
            }
        };
        let position = index as usize;
        debug_assert!(self.slots[position].is_none(), "slot {index} handed out while occupied");
        let generation = self.generations[position].wrapping_add(1) & 0x00ff_ffff;
        self.generations[position] = generation;
        self.slots[position] = Some(value);
        self.occupied += 1;
        Some((index, generation))
    }

    /// The slot at `index`, whatever its generation.
    pub(crate) fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.slots.get_mut(index as usize)?.as_mut()
    }

    /// The slot at `index` if it is still of `generation`.
    pub(crate) fn get_current(&mut self, index: u32, generation: u32) -> Option<&mut T> {
        let position = index as usize;
        if self.generations.get(position) != Some(&generation) {
            return None;
        }
        self.slots.get_mut(position)?.as_mut()
    }

    /// The generation of the slot at `index` (its last one, once freed).
    pub(crate) fn generation(&self, index: u32) -> u32 {
        self.generations.get(index as usize).copied().unwrap_or(0)
    }

    /// Frees the slot at `index`; its index is handed out again with a new generation.
    pub(crate) fn remove(&mut self, index: u32) -> Option<T> {
        let taken = self.slots.get_mut(index as usize)?.take()?;
        self.free.push(index);
        self.occupied -= 1;
        Some(taken)
    }

    /// Occupied slots.
    pub(crate) fn len(&self) -> usize {
        self.occupied
    }

    /// Every occupied slot with its index and generation.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, u32, &mut T)> {
        let generations = &self.generations;
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(move |(index, slot)| Some((index as u32, generations[index], slot.as_mut()?)))
    }

    /// Forgets every slot without dropping it: for buffers the kernel may still write
    /// after a loop's final drain gave up on them.
    pub(crate) fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.slots));
        self.occupied = 0;
    }
}
