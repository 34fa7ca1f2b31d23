//! Plain-text tables, for the commands that print one (`esm status`,
//! `esm checkpoint`): columns left-aligned to their widest cell, two spaces apart,
//! no trailing blanks.

/// `rows` (the header first) as aligned lines, each ending in a newline.
pub fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_without_trailing_blanks() {
        let rows = [
            ["A".to_owned(), "BB".to_owned()],
            ["ccc".to_owned(), String::new()],
        ];
        assert_eq!(super::render(&rows), "A    BB\nccc\n");
    }
}
