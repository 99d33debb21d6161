# Build step: writes the chat page (INPUT, an HTML file) as a C++ source (OUTPUT) defining
# dsmoe::serve::chat_page_html(), so the page is part of the binary (no files to install, no CDN).
file(READ "${INPUT}" PAGE)
string(FIND "${PAGE}" ")DSMOE_PAGE\"" CLASH)
if(NOT CLASH EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw string delimiter )DSMOE_PAGE\"")
endif()
file(WRITE "${OUTPUT}.tmp" "// Generated from ${INPUT} by src/serve/embed_page.cmake: edit the HTML, not this.\n"
  "#include \"serve/chat_page.h\"\n"
  "namespace dsmoe::serve {\n"
  "std::string_view chat_page_html() {\n"
  "  static const char page[] = R\"DSMOE_PAGE(${PAGE})DSMOE_PAGE\";\n"
  "  return {page, sizeof(page) - 1};\n"
  "}\n"
  "}  // namespace dsmoe::serve\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
