//! What the images and PDFs of a prompt weigh in tokens, by the figures Anthropic documents for
//! its models: an image is `width × height / 750` tokens once scaled to fit (its long edge at most
//! 1568 px, about 1.15 megapixels: at most [`IMAGE_CAP`] tokens); a PDF about
//! [`PDF_PAGE_TOKENS`] a page (its text and the page's image). Only what the request holds is
//! read — an image by URL or file id is counted at the cap, never fetched — and no more of it
//! than the answer needs: an image's size is in its first bytes, so a growing prefix of its
//! base64 is decoded until the size can be read ([`image_tokens_of_base64`]); a PDF is decoded in
//! slices to count its pages, never held whole.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// An image's long edge once Anthropic has scaled it down to fit.
const MAX_EDGE: f64 = 1568.0;
/// Pixels a token, in Anthropic's formula.
const PIXELS_PER_TOKEN: f64 = 750.0;
/// The most one image counts: about 1.15–1.2 megapixels, the largest Anthropic keeps.
pub const IMAGE_CAP: u64 = 1600;
/// Tokens of one PDF page: its text and its image, at the top of Anthropic's 1,500–3,000.
pub const PDF_PAGE_TOKENS: u64 = 3000;
/// The most pages a PDF counts for (Anthropic's limit for one document).
pub const MAX_PDF_PAGES: u64 = 100;
/// The fewest bytes one PDF page object takes: the ceiling on the pages a text of a given size
/// can claim, whatever it says.
const MIN_PAGE_BYTES: u64 = 40;
/// The first base64 read for an image's size (PNG's and GIF's sizes are in their first 32
/// bytes), doubled at each try.
const FIRST_PREFIX: usize = 64;
/// The most base64 read for an image's size: a JPEG's size comes after its metadata segments
/// (each at most 64 KiB); data whose size is not found within this is counted at the cap.
const MAX_PREFIX: usize = 1 << 20;
/// The base64 decoded at a time while counting a PDF's pages (a multiple of 4).
const PDF_SLICE: usize = 256 << 10;

/// The tokens of an image `width` × `height` px, scaled as Anthropic scales it.
pub fn image_tokens(width: u64, height: u64) -> u64 {
    if width == 0 || height == 0 {
        return 1;
    }
    let (mut w, mut h) = (width as f64, height as f64);
    let long = w.max(h);
    if long > MAX_EDGE {
        let scale = MAX_EDGE / long;
        w *= scale;
        h *= scale;
    }
    ((w * h / PIXELS_PER_TOKEN).ceil() as u64).clamp(1, IMAGE_CAP)
}

/// The tokens of an image given as base64: its size read from as short a prefix as answers;
/// an image whose size cannot be read (not an image, or its size not within [`MAX_PREFIX`]) is
/// counted at the cap.
pub fn image_tokens_of_base64(data: &str) -> u64 {
    match image_size(data) {
        Some((width, height)) => image_tokens(width, height),
        None => IMAGE_CAP,
    }
}

/// An image's width and height from its base64, decoding a prefix that doubles until the size
/// is read, the data ends, or [`MAX_PREFIX`] is reached.
fn image_size(data: &str) -> Option<(u64, u64)> {
    let data = data.trim().as_bytes();
    let mut len = FIRST_PREFIX;
    loop {
        let whole = len >= data.len();
        // A prefix of whole quadruples decodes alone; the data's end may carry padding.
        let prefix = if whole { data } else { &data[..len - len % 4] };
        let decoded = STANDARD.decode(prefix).ok()?;
        match imagesize::blob_size(&decoded) {
            Ok(size) => return Some((size.width as u64, size.height as u64)),
            // A format it does not know reads no better from more of it.
            Err(imagesize::ImageError::NotSupported) => return None,
            Err(_) if whole || len >= MAX_PREFIX => return None,
            Err(_) => len *= 2,
        }
    }
}

/// The tokens of a PDF given as base64: [`PDF_PAGE_TOKENS`] for each of its pages as
/// [`pdf_pages`] estimates them.
pub fn pdf_tokens_of_base64(data: &str) -> u64 {
    pdf_pages(data) * PDF_PAGE_TOKENS
}

/// A PDF's pages, estimated from its bytes: its page objects (`/Type /Page`), at most one for
/// each [`MIN_PAGE_BYTES`] of it; data in which none is found (not a PDF, or one whose objects
/// are compressed) counts as many pages as its size could hold. Between 1 and [`MAX_PDF_PAGES`].
pub fn pdf_pages(data: &str) -> u64 {
    let data = data.trim().as_bytes();
    let padding = data.iter().rev().take(2).filter(|&&b| b == b'=').count() as u64;
    let decoded_len = (data.len() as u64 / 4 * 3).saturating_sub(padding);
    let ceiling = decoded_len.div_ceil(MIN_PAGE_BYTES).max(1);
    let found = count_page_objects(data);
    let pages = if found == 0 {
        ceiling
    } else {
        found.min(ceiling)
    };
    pages.clamp(1, MAX_PDF_PAGES)
}

/// `/Type /Page` objects (not `/Pages`) in the base64 `data`, decoded a slice at a time with
/// the end of each slice kept before the next, so that a name cut between slices is found;
/// counting stops once past [`MAX_PDF_PAGES`]. Undecodable data counts none.
fn count_page_objects(data: &[u8]) -> u64 {
    // More than `/Type`, the whitespace a writer puts after it, and `/Page` and the byte after.
    const KEEP: usize = 32;
    let finder = memchr::memmem::Finder::new(b"/Type");
    let mut found = 0;
    let mut window: Vec<u8> = Vec::with_capacity(PDF_SLICE / 4 * 3 + KEEP);
    let mut slices = data.chunks(PDF_SLICE).peekable();
    while let Some(slice) = slices.next() {
        let Ok(decoded) = STANDARD.decode(slice) else {
            return found;
        };
        window.extend_from_slice(&decoded);
        // A name that begins in the last bytes may go on in the next slice: judged with it.
        let judged = if slices.peek().is_none() {
            window.len()
        } else {
            window.len().saturating_sub(KEEP)
        };
        let mut at = 0;
        while let Some(offset) = finder.find(&window[at..]) {
            let start = at + offset;
            if start >= judged {
                break;
            }
            if is_page(&window[start + 5..]) {
                found += 1;
                if found > MAX_PDF_PAGES {
                    return found;
                }
            }
            at = start + 5;
        }
        window.drain(..judged);
    }
    found
}

/// Whether the bytes after `/Type` name a page: `/Page` after optional whitespace, not `/Pages`.
fn is_page(rest: &[u8]) -> bool {
    let rest = match rest.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(at) => &rest[at..],
        None => return false,
    };
    rest.starts_with(b"/Page") && rest.get(5).is_none_or(|b| !b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG's signature and IHDR chunk: all `imagesize` reads of it.
    pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        png.extend_from_slice(&width.to_be_bytes());
        png.extend_from_slice(&height.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        png
    }

    #[test]
    fn images_count_by_anthropics_formula() {
        // Anthropic's table: 200×200 ≈ 54, 1000×1000 ≈ 1334, 1092×1092 ≈ 1590.
        assert_eq!(image_tokens(200, 200), 54);
        assert_eq!(image_tokens(1000, 1000), 1334);
        assert_eq!(image_tokens(1092, 1092), 1590);
        // Scaled to a long edge of 1568 px, then capped.
        assert_eq!(image_tokens(3136, 200), 1568 * 100 / 750 + 1);
        assert_eq!(image_tokens(4000, 4000), IMAGE_CAP);
        assert_eq!(image_tokens(0, 10), 1);
    }

    #[test]
    fn an_images_size_is_read_from_its_base64() {
        let mut data = png(400, 300);
        // However much follows, only a prefix is read.
        data.extend(std::iter::repeat_n(0u8, 5 << 20));
        let encoded = STANDARD.encode(&data);
        assert_eq!(image_size(&encoded), Some((400, 300)));
        assert_eq!(image_tokens_of_base64(&encoded), 160);
        // Short data, the whole of it read; data that is no image: the cap.
        assert_eq!(image_size(&STANDARD.encode(png(7, 9))), Some((7, 9)));
        assert_eq!(
            image_tokens_of_base64(&STANDARD.encode(b"no image here")),
            IMAGE_CAP
        );
        assert_eq!(image_tokens_of_base64("!!not base64!!"), IMAGE_CAP);
        assert_eq!(image_tokens_of_base64(""), IMAGE_CAP);
    }

    #[test]
    fn a_pdfs_pages_are_its_page_objects_within_its_size() {
        let page = "1 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >> endobj\n";
        let pdf = format!(
            "%PDF-1.4\n2 0 obj << /Type /Pages /Count 3 >> endobj\n{}%%EOF",
            page.repeat(3)
        );
        assert_eq!(pdf_pages(&STANDARD.encode(&pdf)), 3);
        // Names without the space, and cut across the slices of decoding.
        let tight = "<</Type/Page>>".to_string() + &" ".repeat(60);
        let many = tight.repeat(PDF_SLICE / 40);
        assert_eq!(pdf_pages(&STANDARD.encode(&many)), MAX_PDF_PAGES);
        let few = format!(
            "{}{}",
            " ".repeat(PDF_SLICE / 4 * 3 - 7),
            "/Type /Page >>".to_string() + &" ".repeat(100)
        );
        assert_eq!(pdf_pages(&STANDARD.encode(&few)), 1);
        // Page names packed tighter than any page: at most one a MIN_PAGE_BYTES.
        assert_eq!(pdf_pages(&STANDARD.encode("/Type /Page".repeat(8))), 3);
        // No page object: as many pages as the size could hold, capped.
        assert_eq!(pdf_pages(&STANDARD.encode("x".repeat(400))), 10);
        assert_eq!(
            pdf_pages(&STANDARD.encode("x".repeat(1 << 20))),
            MAX_PDF_PAGES
        );
        assert_eq!(
            pdf_tokens_of_base64(&STANDARD.encode(&pdf)),
            3 * PDF_PAGE_TOKENS
        );
    }
}
