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
/// The longest edge Anthropic takes an image with: larger ones it refuses.
const MAX_IMAGE_EDGE: u64 = 8000;
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
/// A PDF's bytes a page, where its pages cannot be seen (its objects compressed, as Word's,
/// Chrome's and pdfTeX's output usually is): 50 KB. Text pages with their fonts embedded run
/// about 20–80 KB a page (a paper from arXiv is ~50 KB a page, fonts included), so this is close
/// for documents of text; scans run 100 KB and more a page and are over-counted by it, within
/// the cap of [`MAX_PDF_PAGES`]. One page per 40 bytes, as if every byte were page objects,
/// counted any PDF past 4 KB at the cap: 300,000 tokens for a one-page letter.
const BYTES_PER_PAGE: u64 = 50_000;
/// How far around a `/Type /Pages` its `/Count` is looked for: past its `/Kids` (a reference is
/// about 8 bytes, so a hundred of them).
const PAGES_REACH: usize = 1024;
/// The first base64 read for an image's size (PNG's and GIF's sizes are in their first 32
/// bytes), doubled at each try.
const FIRST_PREFIX: usize = 64;
/// The most base64 read for an image's size: a JPEG's size comes after its metadata segments
/// (each at most 64 KiB); data whose size is not found within this is counted at the cap.
const MAX_PREFIX: usize = 1 << 20;
/// The base64 decoded at a time while counting a PDF's pages (a multiple of 4).
const PDF_SLICE: usize = 256 << 10;

/// The tokens of an image `width` × `height` px, scaled as Anthropic scales it. A size no image
/// has (an edge of 0, or past [`MAX_IMAGE_EDGE`], which Anthropic refuses) is not believed: the
/// header lies or the data is not what it says, and it counts at the cap.
pub fn image_tokens(width: u64, height: u64) -> u64 {
    if width == 0 || height == 0 || width.max(height) > MAX_IMAGE_EDGE {
        return IMAGE_CAP;
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
    let mut len = FIRST_PREFIX;
    loop {
        // Line breaks (MIME wraps base64 at 76 characters) are not the data's.
        let mut prefix: Vec<u8> = data
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .take(len + 1)
            .collect();
        let whole = prefix.len() <= len;
        // A prefix of whole quadruples decodes alone; the data's end may carry padding.
        if !whole {
            prefix.truncate(len - len % 4);
        }
        let decoded = STANDARD.decode(&prefix).ok()?;
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

/// A PDF's pages, estimated from its bytes (its base64 read with any line breaks left out), in
/// this order: its visible page objects (`/Type /Page`), at most one for each
/// [`MIN_PAGE_BYTES`] of it; else the `/Count` of its page tree (`/Type /Pages`) where that is
/// readable; else, as in most PDFs of today, whose objects sit in compressed streams, a page for
/// each [`BYTES_PER_PAGE`] of it. Between 1 and [`MAX_PDF_PAGES`].
pub fn pdf_pages(data: &str) -> u64 {
    let seen = scan_pdf(data.as_bytes());
    let pages = if seen.page_objects > 0 {
        seen.page_objects
            .min(seen.decoded_len.div_ceil(MIN_PAGE_BYTES))
    } else if let Some(count) = seen.page_count {
        count
    } else {
        seen.decoded_len.div_ceil(BYTES_PER_PAGE)
    };
    pages.clamp(1, MAX_PDF_PAGES)
}

/// What a scan of a PDF's bytes saw.
#[derive(Debug, Default)]
struct PdfScan {
    /// Its bytes, decoded.
    decoded_len: u64,
    /// `/Type /Page` objects (not `/Pages`), counted up to one past [`MAX_PDF_PAGES`].
    page_objects: u64,
    /// The largest `/Count` of a `/Type /Pages` object: the root of the page tree holds them all.
    page_count: Option<u64>,
}

/// Scans the base64 `data` (whitespace left out, as MIME wraps it at 76 characters), decoded a
/// slice at a time, the bytes around each slice's end kept for the next, so that a name cut
/// between slices is found and a `/Pages` object is read whole. Data that stops decoding is
/// judged by what was seen before.
fn scan_pdf(data: &[u8]) -> PdfScan {
    let finder = memchr::memmem::Finder::new(b"/Type");
    let mut seen = PdfScan {
        decoded_len: decoded_len(data),
        ..PdfScan::default()
    };
    let mut window: Vec<u8> = Vec::with_capacity(PDF_SLICE / 4 * 3 + 2 * PAGES_REACH);
    // The bytes of `window` before `from` were judged with the slice before.
    let mut from = 0;
    let mut slice: Vec<u8> = Vec::with_capacity(PDF_SLICE);
    let mut rest = data.iter().filter(|b| !b.is_ascii_whitespace()).peekable();
    while rest.peek().is_some() {
        slice.clear();
        slice.extend(rest.by_ref().take(PDF_SLICE));
        let Ok(decoded) = STANDARD.decode(&slice) else {
            return seen;
        };
        window.extend_from_slice(&decoded);
        // A name that begins in the last bytes may go on in the next slice: judged with it.
        let judged = if rest.peek().is_none() {
            window.len()
        } else {
            window.len().saturating_sub(PAGES_REACH)
        };
        let mut at = from;
        while let Some(offset) = finder.find(&window[at..]) {
            let start = at + offset;
            if start >= judged {
                break;
            }
            match type_named(&window[start + 5..]) {
                Some(b"/Page") => {
                    seen.page_objects += 1;
                    if seen.page_objects > MAX_PDF_PAGES {
                        return seen;
                    }
                }
                Some(b"/Pages") => {
                    if let Some(count) = pages_count(&window, start) {
                        seen.page_count = seen.page_count.max(Some(count));
                    }
                }
                _ => {}
            }
            at = start + 5;
        }
        // What is kept: the bytes not yet judged, and those before them a `/Pages` looks back on.
        let drop = judged.saturating_sub(PAGES_REACH);
        window.drain(..drop);
        from = judged - drop;
    }
    seen
}

/// The bytes base64 `data` decodes to, whitespace left out.
fn decoded_len(data: &[u8]) -> u64 {
    let mut chars = 0u64;
    let mut padding = 0u64;
    for &b in data.iter().filter(|b| !b.is_ascii_whitespace()) {
        chars += 1;
        padding = if b == b'=' { padding + 1 } else { 0 };
    }
    (chars / 4 * 3).saturating_sub(padding.min(2))
}

/// The name after `/Type` (after optional whitespace), where it is `/Page` or `/Pages`.
fn type_named(rest: &[u8]) -> Option<&'static [u8]> {
    let at = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &rest[at..];
    let ends = |len: usize| rest.get(len).is_none_or(|b| !b.is_ascii_alphanumeric());
    if rest.starts_with(b"/Pages") && ends(6) {
        Some(b"/Pages")
    } else if rest.starts_with(b"/Page") && ends(5) {
        Some(b"/Page")
    } else {
        None
    }
}

/// The `/Count` of the `/Pages` object whose `/Type` is at `at` in `window`: looked for between
/// the object's start (`obj`) and its end (`endobj`), at most [`PAGES_REACH`] either side.
fn pages_count(window: &[u8], at: usize) -> Option<u64> {
    let before = &window[at.saturating_sub(PAGES_REACH)..at];
    let begins = memchr::memmem::rfind(before, b"obj").map_or(0, |found| found + 3);
    let after = &window[at..(at + PAGES_REACH).min(window.len())];
    let ends = memchr::memmem::find(after, b"endobj").unwrap_or(after.len());
    let object = &window[at - before.len() + begins..at + ends];
    let named = memchr::memmem::find(object, b"/Count")? + 6;
    let digits: Vec<u8> = object[named..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .take(9)
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
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
        // Sizes no image has count at the cap, not at 1.
        assert_eq!(image_tokens(0, 10), IMAGE_CAP);
        assert_eq!(image_tokens(0, 0), IMAGE_CAP);
        assert_eq!(image_tokens(u64::from(u32::MAX), 1), IMAGE_CAP);
        assert_eq!(image_tokens(8000, 1), 1);
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
        assert_eq!(
            pdf_tokens_of_base64(&STANDARD.encode(&pdf)),
            3 * PDF_PAGE_TOKENS
        );
        // Base64 wrapped at 76 characters, as MIME writes it, reads the same.
        let wrapped: Vec<String> = STANDARD
            .encode(&pdf)
            .as_bytes()
            .chunks(76)
            .map(|line| String::from_utf8(line.to_vec()).unwrap())
            .collect();
        assert_eq!(pdf_pages(&wrapped.join("\r\n")), 3);
    }

    /// A PDF whose page objects are compressed: the `/Count` of its page tree where that is
    /// visible (an outline's `/Count` is not the pages'), else a page a [`BYTES_PER_PAGE`],
    /// capped.
    #[test]
    fn a_pdf_without_visible_pages_counts_its_page_tree_or_its_size() {
        let tree = "%PDF-1.5\n5 0 obj\n<< /Type /Pages /Kids [6 0 R 7 0 R] /Count 7 >>\nendobj\n\
            9 0 obj << /Type /Outlines /Count 40 >> endobj\n%%EOF";
        assert_eq!(pdf_pages(&STANDARD.encode(tree)), 7);
        let compressed = |len: usize| {
            let mut pdf = b"%PDF-1.5\n".to_vec();
            pdf.resize(len, 0x9c);
            STANDARD.encode(pdf)
        };
        assert_eq!(pdf_pages(&compressed(400)), 1);
        assert_eq!(pdf_pages(&compressed(20_000)), 1);
        assert_eq!(pdf_pages(&compressed(3 * BYTES_PER_PAGE as usize)), 3);
        assert_eq!(pdf_pages(&compressed(1 << 20)), 21);
        assert_eq!(pdf_pages(&compressed(20 << 20)), MAX_PDF_PAGES);
    }
}
