//! Which of the FAQ's languages a text is in.
//!
//! A shop's chat mixes Chinese and Latin script, and the one distinction that
//! matters for picking an answer is whether the visitor wrote Chinese. So the
//! rule is a character test, not a language model: any Chinese character
//! means Chinese (when the FAQ has Chinese); anything else is the FAQ's first
//! other language.

/// Whether the text has Chinese (CJK unified ideograph) characters.
pub(crate) fn is_chinese(text: &str) -> bool {
    text.chars()
        .any(|c| matches!(c, '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}'))
}

/// Whether a language code names Chinese: `zh`, or a tagged form like `zh-CN`.
fn is_chinese_code(code: &str) -> bool {
    code == "zh" || code.starts_with("zh-")
}

/// The language of `text` among `languages` (the FAQ's, first one first):
/// Chinese text is the FAQ's Chinese if it has one; other text is the first
/// language that is not Chinese, so `["zh", "en"]` still answers English in
/// English. With nothing better, the first language.
pub(crate) fn detect<'a>(text: &str, languages: &'a [String]) -> &'a str {
    let chinese = is_chinese(text);
    languages
        .iter()
        .find(|code| is_chinese_code(code) == chinese)
        .or_else(|| languages.first())
        .map_or("en", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn chinese_text_picks_chinese_and_other_text_the_first_other_language() {
        let both = codes(&["zh", "en"]);
        assert_eq!(detect("我的订单到哪了", &both), "zh");
        assert_eq!(detect("where is my order", &both), "en");
        assert_eq!(detect("order 到哪了", &both), "zh");
        let english = codes(&["en"]);
        assert_eq!(detect("我的订单", &english), "en");
        let tagged = codes(&["en", "zh-CN"]);
        assert_eq!(detect("退款", &tagged), "zh-CN");
        assert_eq!(detect("anything", &[]), "en");
    }
}
