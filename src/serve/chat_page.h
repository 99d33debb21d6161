// The web chat page GET / serves (src/serve/chat_page.html, compiled into the binary by
// src/serve/embed_page.cmake): HTML, CSS and script in one document that streams answers from
// /v1/chat/completions and fetches nothing from anywhere else.
#pragma once
#include <string_view>

namespace dsmoe::serve {

std::string_view chat_page_html();

}  // namespace dsmoe::serve
