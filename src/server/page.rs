//! A page of a list, as OpenAI's and Anthropic's list endpoints cut them: the items between two
//! cursors (the item after which the page begins, the item before which it ends), the `limit`
//! of them nearest the cursor given, and whether more lie beyond.

use std::ops::Range;

/// The page of a list of `len` items (in the order listed): the items after the one at `after`
/// and before the one at `before`; of those, the first `limit`, or the last `limit` when only
/// `before` is given (a page back from it). Returns the page's range and whether items between
/// the cursors were left out of it.
pub(super) fn window(
    len: usize,
    after: Option<usize>,
    before: Option<usize>,
    limit: usize,
) -> (Range<usize>, bool) {
    let start = after.map_or(0, |at| at + 1);
    let end = before.unwrap_or(len).max(start);
    let has_more = end - start > limit;
    let page = if before.is_some() && after.is_none() {
        end.saturating_sub(limit).max(start)..end
    } else {
        start..end.min(start + limit)
    };
    (page, has_more)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::window;

    proptest! {
        /// Paging forward from the start with each page's last item, or back from the end with
        /// each page's first, lists every item once, in order, and `has_more` is false only on
        /// the last page.
        #[test]
        fn paging_either_way_lists_every_item_once(len in 0usize..50, limit in 1usize..12) {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let (page, has_more) = window(len, after, None, limit);
                prop_assert!(page.len() <= limit);
                seen.extend(page.clone());
                if !has_more {
                    break;
                }
                after = Some(page.end - 1);
            }
            prop_assert_eq!(&seen, &(0..len).collect::<Vec<_>>());
            let mut seen = Vec::new();
            let mut before = None;
            loop {
                let (page, has_more) = window(len, None, before.or(Some(len)), limit);
                seen.splice(0..0, page.clone());
                if !has_more {
                    break;
                }
                before = Some(page.start);
            }
            prop_assert_eq!(&seen, &(0..len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn cursors_in_the_wrong_order_give_an_empty_page() {
        assert_eq!(window(10, Some(6), Some(3), 5), (7..7, false));
    }
}
