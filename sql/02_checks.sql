-- Input checks and normalisation, shared by every public function.
--
-- Each raises a PX error naming the offending value, with a HINT saying what
-- is accepted, before anything is written. Error codes are listed in README.md.
-- These are internal (not granted to anyone): public functions call them.
-- No plain literal holds a backslash escape that a session with
-- standard_conforming_strings off reads otherwise ('\.' is '.' there: '[.]'
-- instead; 0028, a hostile test: client@nodot was registered, a key's retry
-- refused). The \uXXXX code points below read the same either way.

-- A character's code point as U+XXXX: four hex digits at least, all of them
-- beyond the Basic Multilingual Plane (U+E0041, not U+E004: 0023).
CREATE FUNCTION pyxp.code_point(p_char text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$ SELECT 'U+' || upper(lpad(to_hex(ascii(p_char)), greatest(4, length(to_hex(ascii(p_char)))), '0')) $$;

-- What every text a caller gives goes through first (wallets, emails, ids).
--
-- Size before work: a text longer than 4 bytes per allowed character (+1 KiB
-- of surrounding whitespace) is refused by its byte count, which is read
-- from the value's header, before anything copies it (a regex works on 4
-- bytes per character: a 283 MB id used to reach "invalid memory alloc
-- request size"). Then, for identities (p_nfkc), Unicode NFKC, so that
-- compatibility forms (full-width letters, no-break spaces) are one text;
-- then whitespace of any kind is trimmed at both ends; then any invisible
-- character left is refused: Unicode categories Cc and Cf and the
-- Default_Ignorable_Code_Point property (zero-width spaces and joiners,
-- U+2060, U+FEFF, soft hyphen, bidi controls, variation selectors, Hangul
-- fillers, tags). Two inputs a person cannot tell apart on screen must never
-- become two users. The character class below was generated from Unicode 15
-- data (+ U+2800, the Braille pattern blank); tests/test_integrity.py checks every Cc/Cf code point
-- Python knows.
-- Empty and too-long values are left to the caller (its own code and hint).
CREATE FUNCTION pyxp.cleaned_text(p_what text, p_value text, p_max integer, p_code text, p_nfkc boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text;
    v_invisible text;
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    ELSIF octet_length(p_value) > 4 * p_max + 1024 THEN
        RAISE EXCEPTION 'invalid %: a text of % bytes', p_what, octet_length(p_value)
            USING ERRCODE = p_code, HINT = format('%s has at most %s characters', p_what, p_max);
    END IF;
    v := pyxp.trimmed_text(p_value, p_nfkc);
    v_invisible := pyxp.invisible_character(v);
    IF v_invisible IS NOT NULL THEN
        RAISE EXCEPTION 'invalid %: % contains %, an invisible or control character', p_what,
                        quote_literal(left(regexp_replace(v, '[^[:print:]]', '?', 'g'), 60)),
                        pyxp.code_point(v_invisible)
            USING ERRCODE = p_code,
                  HINT = format('%s has no control or invisible characters (zero-width spaces, joiners, '
                                'soft hyphens, bidi controls, ...)', p_what);
    END IF;
    RETURN v;
END
$$;

-- The two steps of cleaned_text that change or judge a text, without raising
-- (audit() also reads stored identities with them): Unicode NFKC when asked
-- (ASCII is already in NFKC) and whitespace of any kind trimmed at both ends;
-- the first control or invisible character, or NULL.
CREATE FUNCTION pyxp.trimmed_text(p_value text, p_nfkc boolean)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT regexp_replace(
        CASE WHEN p_nfkc AND octet_length(p_value) <> length(p_value) THEN normalize(p_value, NFKC)
             ELSE p_value END,
        '^[[:space:]\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[[:space:]\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$', '', 'g')
$$;

CREATE FUNCTION pyxp.invisible_character(p_value text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT substring(p_value from '[\u0001-\u001f\u007f-\u009f\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f'
                                  '\u0890-\u0891\u08e2\u115f-\u1160\u17b4-\u17b5\u180b-\u180f\u200b-\u200f'
                                  '\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb'
                                  '\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3'
                                  '\U0001d173-\U0001d17a\U000e0000-\U000e0fff]')
$$;

-- Wallet (SPEC 1): cleaned_text with NFKC; `0x` + 40 hex is lower-cased so
-- checksum-cased and lower-case forms are one user; empty or > 128
-- characters: PX001.
CREATE FUNCTION pyxp.checked_wallet(p_wallet text, p_what text DEFAULT 'wallet')
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.cleaned_text(p_what, p_wallet, 128, 'PX001', true);
BEGIN
    IF v IS NULL OR v = '' THEN
        RAISE EXCEPTION 'invalid %: %', p_what, coalesce(quote_literal(left(p_wallet, 40)), 'NULL')
            USING ERRCODE = 'PX001', HINT = 'a wallet is a non-empty id of at most 128 characters, e.g. 0x + 40 hex digits';
    ELSIF length(v) > 128 THEN
        RAISE EXCEPTION 'invalid %: % (% characters)', p_what, quote_literal(left(v, 40) || '...'), length(v)
            USING ERRCODE = 'PX001', HINT = 'a wallet has at most 128 characters';
    ELSIF v ~* '^0x[0-9a-f]{40}$' THEN
        RETURN lower(v);
    END IF;
    RETURN v;
END
$$;

-- A text lower-cased the same way in every database, whatever its collation
-- or locale: ASCII by lower(... COLLATE "C"), every other letter by the table
-- below, Unicode's simple lowercase mapping of 1,407 letters as glibc's
-- C.UTF-8 applies it (generated from PostgreSQL 15's lower() in C.UTF-8,
-- glibc 2.36: one letter for one, U+0130 to i; Python's str.lower() agrees on
-- every other letter). lower() alone follows the database's default
-- collation: in a C-locale database it left ÉLODIE@… upper-cased, and under
-- ICU tr-TR it turned ALICE@… into alıce@… (a hostile test, 2026-11-27: one
-- client became two, onboarded twice). 0028.
CREATE FUNCTION pyxp.lower_cased(p_text text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$
    SELECT CASE WHEN octet_length(p_text) = length(p_text) THEN lower(p_text COLLATE "C")  -- ASCII only (UTF8)
                ELSE translate(lower(p_text COLLATE "C"),
                               'ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮİĲĴĶĹĻ'
                               || 'ĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŸŹŻŽƁƂƄƆƇƉƊƋƎƏƐƑƓƔƖƗƘƜƝƟƠƢƤƦƧƩƬ'
                               || 'ƮƯƱƲƳƵƷƸƼǄǅǇǈǊǋǍǏǑǓǕǗǙǛǞǠǢǤǦǨǪǬǮǱǲǴǶǷǸǺǼǾȀȂȄȆȈȊȌȎȐȒȔȖȘȚȜȞȠȢȤ'
                               || 'ȦȨȪȬȮȰȲȺȻȽȾɁɃɄɅɆɈɊɌɎͰͲͶͿΆΈΉΊΌΎΏΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩΪΫϏϘϚ'
                               || 'ϜϞϠϢϤϦϨϪϬϮϴϷϹϺϽϾϿЀЁЂЃЄЅІЇЈЉЊЋЌЍЎЏАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪ'
                               || 'ЫЬЭЮЯѠѢѤѦѨѪѬѮѰѲѴѶѸѺѼѾҀҊҌҎҐҒҔҖҘҚҜҞҠҢҤҦҨҪҬҮҰҲҴҶҸҺҼҾӀӁӃӅӇӉӋӍӐӒӔ'
                               || 'ӖӘӚӜӞӠӢӤӦӨӪӬӮӰӲӴӶӸӺӼӾԀԂԄԆԈԊԌԎԐԒԔԖԘԚԜԞԠԢԤԦԨԪԬԮԱԲԳԴԵԶԷԸԹԺԻԼԽԾԿ'
                               || 'ՀՁՂՃՄՅՆՇՈՉՊՋՌՍՎՏՐՑՒՓՔՕՖႠႡႢႣႤႥႦႧႨႩႪႫႬႭႮႯႰႱႲႳႴႵႶႷႸႹႺႻႼႽႾႿჀჁჂჃჄ'
                               || 'ჅჇჍᎠᎡᎢᎣᎤᎥᎦᎧᎨᎩᎪᎫᎬᎭᎮᎯᎰᎱᎲᎳᎴᎵᎶᎷᎸᎹᎺᎻᎼᎽᎾᎿᏀᏁᏂᏃᏄᏅᏆᏇᏈᏉᏊᏋᏌᏍᏎᏏᏐᏑᏒᏓᏔᏕᏖᏗᏘ'
                               || 'ᏙᏚᏛᏜᏝᏞᏟᏠᏡᏢᏣᏤᏥᏦᏧᏨᏩᏪᏫᏬᏭᏮᏯᏰᏱᏲᏳᏴᏵᲐᲑᲒᲓᲔᲕᲖᲗᲘᲙᲚᲛᲜᲝᲞᲟᲠᲡᲢᲣᲤᲥᲦᲧᲨᲩᲪᲫᲬᲭᲮ'
                               || 'ᲯᲰᲱᲲᲳᲴᲵᲶᲷᲸᲹᲺᲽᲾᲿḀḂḄḆḈḊḌḎḐḒḔḖḘḚḜḞḠḢḤḦḨḪḬḮḰḲḴḶḸḺḼḾṀṂṄṆṈṊṌṎṐṒṔṖṘ'
                               || 'ṚṜṞṠṢṤṦṨṪṬṮṰṲṴṶṸṺṼṾẀẂẄẆẈẊẌẎẐẒẔẞẠẢẤẦẨẪẬẮẰẲẴẶẸẺẼẾỀỂỄỆỈỊỌỎỐỒỔỖỘ'
                               || 'ỚỜỞỠỢỤỦỨỪỬỮỰỲỴỶỸỺỼỾἈἉἊἋἌἍἎἏἘἙἚἛἜἝἨἩἪἫἬἭἮἯἸἹἺἻἼἽἾἿὈὉὊὋὌὍὙὛὝὟὨ'
                               || 'ὩὪὫὬὭὮὯᾈᾉᾊᾋᾌᾍᾎᾏᾘᾙᾚᾛᾜᾝᾞᾟᾨᾩᾪᾫᾬᾭᾮᾯᾸᾹᾺΆᾼῈΈῊΉῌῘῙῚΊῨῩῪΎῬῸΌῺΏῼΩKÅℲⅠ'
                               || 'ⅡⅢⅣⅤⅥⅦⅧⅨⅩⅪⅫⅬⅭⅮⅯↃⒶⒷⒸⒹⒺⒻⒼⒽⒾⒿⓀⓁⓂⓃⓄⓅⓆⓇⓈⓉⓊⓋⓌⓍⓎⓏⰀⰁⰂⰃⰄⰅⰆⰇⰈⰉⰊⰋⰌⰍⰎⰏⰐⰑ'
                               || 'ⰒⰓⰔⰕⰖⰗⰘⰙⰚⰛⰜⰝⰞⰟⰠⰡⰢⰣⰤⰥⰦⰧⰨⰩⰪⰫⰬⰭⰮⰯⱠⱢⱣⱤⱧⱩⱫⱭⱮⱯⱰⱲⱵⱾⱿⲀⲂⲄⲆⲈⲊⲌⲎⲐⲒⲔⲖⲘⲚⲜ'
                               || 'ⲞⲠⲢⲤⲦⲨⲪⲬⲮⲰⲲⲴⲶⲸⲺⲼⲾⳀⳂⳄⳆⳈⳊⳌⳎⳐⳒⳔⳖⳘⳚⳜⳞⳠⳢⳫⳭⳲꙀꙂꙄꙆꙈꙊꙌꙎꙐꙒꙔꙖꙘꙚꙜꙞꙠꙢꙤꙦꙨꙪ'
                               || 'ꙬꚀꚂꚄꚆꚈꚊꚌꚎꚐꚒꚔꚖꚘꚚꜢꜤꜦꜨꜪꜬꜮꜲꜴꜶꜸꜺꜼꜾꝀꝂꝄꝆꝈꝊꝌꝎꝐꝒꝔꝖꝘꝚꝜꝞꝠꝢꝤꝦꝨꝪꝬꝮꝹꝻꝽꝾꞀꞂꞄ'
                               || 'ꞆꞋꞍꞐꞒꞖꞘꞚꞜꞞꞠꞢꞤꞦꞨꞪꞫꞬꞭꞮꞰꞱꞲꞳꞴꞶꞸꞺꞼꞾꟀꟂꟄꟅꟆꟇꟉꟐꟖꟘꟵＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳ'
                               || 'ＴＵＶＷＸＹＺ𐐀𐐁𐐂𐐃𐐄𐐅𐐆𐐇𐐈𐐉𐐊𐐋𐐌𐐍𐐎𐐏𐐐𐐑𐐒𐐓𐐔𐐕𐐖𐐗𐐘𐐙𐐚𐐛𐐜𐐝𐐞𐐟𐐠𐐡𐐢𐐣𐐤𐐥𐐦𐐧𐒰𐒱𐒲𐒳𐒴𐒵𐒶𐒷𐒸𐒹𐒺𐒻𐒼'
                               || '𐒽𐒾𐒿𐓀𐓁𐓂𐓃𐓄𐓅𐓆𐓇𐓈𐓉𐓊𐓋𐓌𐓍𐓎𐓏𐓐𐓑𐓒𐓓𐕰𐕱𐕲𐕳𐕴𐕵𐕶𐕷𐕸𐕹𐕺𐕼𐕽𐕾𐕿𐖀𐖁𐖂𐖃𐖄𐖅𐖆𐖇𐖈𐖉𐖊𐖌𐖍𐖎𐖏𐖐𐖑𐖒𐖔𐖕𐲀𐲁'
                               || '𐲂𐲃𐲄𐲅𐲆𐲇𐲈𐲉𐲊𐲋𐲌𐲍𐲎𐲏𐲐𐲑𐲒𐲓𐲔𐲕𐲖𐲗𐲘𐲙𐲚𐲛𐲜𐲝𐲞𐲟𐲠𐲡𐲢𐲣𐲤𐲥𐲦𐲧𐲨𐲩𐲪𐲫𐲬𐲭𐲮𐲯𐲰𐲱𐲲𑢠𑢡𑢢𑢣𑢤𑢥𑢦𑢧𑢨𑢩𑢪'
                               || '𑢫𑢬𑢭𑢮𑢯𑢰𑢱𑢲𑢳𑢴𑢵𑢶𑢷𑢸𑢹𑢺𑢻𑢼𑢽𑢾𑢿𖹀𖹁𖹂𖹃𖹄𖹅𖹆𖹇𖹈𖹉𖹊𖹋𖹌𖹍𖹎𖹏𖹐𖹑𖹒𖹓𖹔𖹕𖹖𖹗𖹘𖹙𖹚𖹛𖹜𖹝𖹞𖹟𞤀𞤁𞤂𞤃𞤄𞤅𞤆'
                               || '𞤇𞤈𞤉𞤊𞤋𞤌𞤍𞤎𞤏𞤐𞤑𞤒𞤓𞤔𞤕𞤖𞤗𞤘𞤙𞤚𞤛𞤜𞤝𞤞𞤟𞤠𞤡',
                               'àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþāăąćĉċčďđēĕėęěĝğġģĥħĩīĭįiĳĵķĺļ'
                               || 'ľŀłńņňŋōŏőœŕŗřśŝşšţťŧũūŭůűųŵŷÿźżžɓƃƅɔƈɖɗƌǝəɛƒɠɣɩɨƙɯɲɵơƣƥʀƨʃƭ'
                               || 'ʈưʊʋƴƶʒƹƽǆǆǉǉǌǌǎǐǒǔǖǘǚǜǟǡǣǥǧǩǫǭǯǳǳǵƕƿǹǻǽǿȁȃȅȇȉȋȍȏȑȓȕȗșțȝȟƞȣȥ'
                               || 'ȧȩȫȭȯȱȳⱥȼƚⱦɂƀʉʌɇɉɋɍɏͱͳͷϳάέήίόύώαβγδεζηθικλμνξοπρστυφχψωϊϋϗϙϛ'
                               || 'ϝϟϡϣϥϧϩϫϭϯθϸϲϻͻͼͽѐёђѓєѕіїјљњћќѝўџабвгдежзийклмнопрстуфхцчшщъ'
                               || 'ыьэюяѡѣѥѧѩѫѭѯѱѳѵѷѹѻѽѿҁҋҍҏґғҕҗҙқҝҟҡңҥҧҩҫҭүұҳҵҷҹһҽҿӏӂӄӆӈӊӌӎӑӓӕ'
                               || 'ӗәӛӝӟӡӣӥӧөӫӭӯӱӳӵӷӹӻӽӿԁԃԅԇԉԋԍԏԑԓԕԗԙԛԝԟԡԣԥԧԩԫԭԯաբգդեզէըթժիլխծկ'
                               || 'հձղճմյնշոչպջռսվտրցւփքօֆⴀⴁⴂⴃⴄⴅⴆⴇⴈⴉⴊⴋⴌⴍⴎⴏⴐⴑⴒⴓⴔⴕⴖⴗⴘⴙⴚⴛⴜⴝⴞⴟⴠⴡⴢⴣⴤ'
                               || 'ⴥⴧⴭꭰꭱꭲꭳꭴꭵꭶꭷꭸꭹꭺꭻꭼꭽꭾꭿꮀꮁꮂꮃꮄꮅꮆꮇꮈꮉꮊꮋꮌꮍꮎꮏꮐꮑꮒꮓꮔꮕꮖꮗꮘꮙꮚꮛꮜꮝꮞꮟꮠꮡꮢꮣꮤꮥꮦꮧꮨ'
                               || 'ꮩꮪꮫꮬꮭꮮꮯꮰꮱꮲꮳꮴꮵꮶꮷꮸꮹꮺꮻꮼꮽꮾꮿᏸᏹᏺᏻᏼᏽაბგდევზთიკლმნოპჟრსტუფქღყშჩცძწჭხ'
                               || 'ჯჰჱჲჳჴჵჶჷჸჹჺჽჾჿḁḃḅḇḉḋḍḏḑḓḕḗḙḛḝḟḡḣḥḧḩḫḭḯḱḳḵḷḹḻḽḿṁṃṅṇṉṋṍṏṑṓṕṗṙ'
                               || 'ṛṝṟṡṣṥṧṩṫṭṯṱṳṵṷṹṻṽṿẁẃẅẇẉẋẍẏẑẓẕßạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộ'
                               || 'ớờởỡợụủứừửữựỳỵỷỹỻỽỿἀἁἂἃἄἅἆἇἐἑἒἓἔἕἠἡἢἣἤἥἦἧἰἱἲἳἴἵἶἷὀὁὂὃὄὅὑὓὕὗὠ'
                               || 'ὡὢὣὤὥὦὧᾀᾁᾂᾃᾄᾅᾆᾇᾐᾑᾒᾓᾔᾕᾖᾗᾠᾡᾢᾣᾤᾥᾦᾧᾰᾱὰάᾳὲέὴήῃῐῑὶίῠῡὺύῥὸόὼώῳωkåⅎⅰ'
                               || 'ⅱⅲⅳⅴⅵⅶⅷⅸⅹⅺⅻⅼⅽⅾⅿↄⓐⓑⓒⓓⓔⓕⓖⓗⓘⓙⓚⓛⓜⓝⓞⓟⓠⓡⓢⓣⓤⓥⓦⓧⓨⓩⰰⰱⰲⰳⰴⰵⰶⰷⰸⰹⰺⰻⰼⰽⰾⰿⱀⱁ'
                               || 'ⱂⱃⱄⱅⱆⱇⱈⱉⱊⱋⱌⱍⱎⱏⱐⱑⱒⱓⱔⱕⱖⱗⱘⱙⱚⱛⱜⱝⱞⱟⱡɫᵽɽⱨⱪⱬɑɱɐɒⱳⱶȿɀⲁⲃⲅⲇⲉⲋⲍⲏⲑⲓⲕⲗⲙⲛⲝ'
                               || 'ⲟⲡⲣⲥⲧⲩⲫⲭⲯⲱⲳⲵⲷⲹⲻⲽⲿⳁⳃⳅⳇⳉⳋⳍⳏⳑⳓⳕⳗⳙⳛⳝⳟⳡⳣⳬⳮⳳꙁꙃꙅꙇꙉꙋꙍꙏꙑꙓꙕꙗꙙꙛꙝꙟꙡꙣꙥꙧꙩꙫ'
                               || 'ꙭꚁꚃꚅꚇꚉꚋꚍꚏꚑꚓꚕꚗꚙꚛꜣꜥꜧꜩꜫꜭꜯꜳꜵꜷꜹꜻꜽꜿꝁꝃꝅꝇꝉꝋꝍꝏꝑꝓꝕꝗꝙꝛꝝꝟꝡꝣꝥꝧꝩꝫꝭꝯꝺꝼᵹꝿꞁꞃꞅ'
                               || 'ꞇꞌɥꞑꞓꞗꞙꞛꞝꞟꞡꞣꞥꞧꞩɦɜɡɬɪʞʇʝꭓꞵꞷꞹꞻꞽꞿꟁꟃꞔʂᶎꟈꟊꟑꟗꟙꟶａｂｃｄｅｆｇｈｉｊｋｌｍｎｏｐｑｒｓ'
                               || 'ｔｕｖｗｘｙｚ𐐨𐐩𐐪𐐫𐐬𐐭𐐮𐐯𐐰𐐱𐐲𐐳𐐴𐐵𐐶𐐷𐐸𐐹𐐺𐐻𐐼𐐽𐐾𐐿𐑀𐑁𐑂𐑃𐑄𐑅𐑆𐑇𐑈𐑉𐑊𐑋𐑌𐑍𐑎𐑏𐓘𐓙𐓚𐓛𐓜𐓝𐓞𐓟𐓠𐓡𐓢𐓣𐓤'
                               || '𐓥𐓦𐓧𐓨𐓩𐓪𐓫𐓬𐓭𐓮𐓯𐓰𐓱𐓲𐓳𐓴𐓵𐓶𐓷𐓸𐓹𐓺𐓻𐖗𐖘𐖙𐖚𐖛𐖜𐖝𐖞𐖟𐖠𐖡𐖣𐖤𐖥𐖦𐖧𐖨𐖩𐖪𐖫𐖬𐖭𐖮𐖯𐖰𐖱𐖳𐖴𐖵𐖶𐖷𐖸𐖹𐖻𐖼𐳀𐳁'
                               || '𐳂𐳃𐳄𐳅𐳆𐳇𐳈𐳉𐳊𐳋𐳌𐳍𐳎𐳏𐳐𐳑𐳒𐳓𐳔𐳕𐳖𐳗𐳘𐳙𐳚𐳛𐳜𐳝𐳞𐳟𐳠𐳡𐳢𐳣𐳤𐳥𐳦𐳧𐳨𐳩𐳪𐳫𐳬𐳭𐳮𐳯𐳰𐳱𐳲𑣀𑣁𑣂𑣃𑣄𑣅𑣆𑣇𑣈𑣉𑣊'
                               || '𑣋𑣌𑣍𑣎𑣏𑣐𑣑𑣒𑣓𑣔𑣕𑣖𑣗𑣘𑣙𑣚𑣛𑣜𑣝𑣞𑣟𖹠𖹡𖹢𖹣𖹤𖹥𖹦𖹧𖹨𖹩𖹪𖹫𖹬𖹭𖹮𖹯𖹰𖹱𖹲𖹳𖹴𖹵𖹶𖹷𖹸𖹹𖹺𖹻𖹼𖹽𖹾𖹿𞤢𞤣𞤤𞤥𞤦𞤧𞤨'
                               || '𞤩𞤪𞤫𞤬𞤭𞤮𞤯𞤰𞤱𞤲𞤳𞤴𞤵𞤶𞤷𞤸𞤹𞤺𞤻𞤼𞤽𞤾𞤿𞥀𞥁𞥂𞥃') END
$$;

-- A client email's one form, from a text already trimmed and NFKC-normalised
-- (pyxp.trimmed_text): lower-cased (pyxp.lower_cased), the final sigma as a
-- sigma (Unicode's case folding: ΟΔΟΣ@… and οδος@… are one email), then
-- NFKC again. Lower-casing a capital with a combining mark that has no
-- precomposed capital form (J̌, H̱, T̈, İ + a mark, ...) leaves the lower-case
-- letter and its mark apart, where the same email typed in lower case is
-- composed by NFKC (ǰ): J̌AN@… and ǰan@… were two clients, each onboarded,
-- and the stored form did not read as itself (0045, a hostile test,
-- helper-76). A SQL function: inlined where it is called.
CREATE FUNCTION pyxp.folded_email(p_email text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$ SELECT normalize(replace(pyxp.lower_cased(p_email), 'ς', 'σ'), NFKC) $$;

-- Client email (SPEC 1): cleaned_text with NFKC, folded (pyxp.folded_email),
-- at most 254
-- characters, one `@`, a non-empty local part and a domain containing a dot,
-- none of its labels empty (0028: a@.b.c and a@b..c were accepted) (PX002).
-- `+tag` sub-addresses stay distinct.
CREATE FUNCTION pyxp.checked_email(p_email text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.folded_email(pyxp.cleaned_text('client email', p_email, 254, 'PX002', true));
BEGIN
    IF v IS NULL OR length(v) > 254
       OR v !~ '^[^@[:space:][:cntrl:]]+@([^@[:space:][:cntrl:].]+[.])+[^@[:space:][:cntrl:].]+$'
    THEN
        RAISE EXCEPTION 'invalid client email: %', coalesce(quote_literal(left(p_email, 300)), 'NULL')
            USING ERRCODE = 'PX002',
                  HINT = 'an email is local@domain.tld: one @, a non-empty local part, a domain with a dot, at most 254 characters';
    END IF;
    RETURN v;
END
$$;

-- Until when registrations may hold a client email as checked_email read
-- it before 0028 (lower() in the database's collation): the time migration
-- 0034 ran, in a database that was below 0028 when that run began, then
-- held registrations, and whose collation reads some letter otherwise than
-- pyxp.lower_cased (LOCALE 'C', ICU tr-TR); else NULL (a database already
-- at 0028, which stored its registrations as read since: a re-test found
-- the collision below again in one upgraded from 0033; every database
-- installed since; C.UTF-8's). A constant that migration writes. Up to 0033 every database read emails the old way
-- too, and in a Turkish one lower('I') is 'ı': ıstanbul@… registered for one
-- client was onboarded by another person signing in as Istanbul@… (a
-- hostile test, 0034), whose email reads as istanbul@… since 0028.
CREATE FUNCTION pyxp.emails_lowered_until()
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT NULL::timestamptz $$;

-- A client email as checked_email read it before 0028 (lower() in the
-- database's collation), when that differs from how it reads it now and a
-- registration made until pyxp.emails_lowered_until() holds that form: in a
-- database whose collation is not C.UTF-8's (LOCALE 'C', ICU tr-TR), the
-- registrations, onboarding keys and ledger rows written before 0028 hold
-- this form, and the flows find them by it (a hostile test: after the
-- upgrade, a registered client's sign-in found nothing, and an onboarded
-- client was paid again); and every form such a database stored that reads
-- as this email now (xp_email_forms_before_0028: a client spelling it
-- otherwise than at its registration). Empty when none (C.UTF-8: every email
-- but those holding U+0130).
CREATE FUNCTION pyxp.email_before_0028(p_email text, p_email_now text)
RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(array_agg(DISTINCT f.form ORDER BY f.form) FILTER (WHERE f.form <> p_email_now), '{}')
      FROM (SELECT l.form
              FROM (SELECT lower(pyxp.cleaned_text('client email', p_email, 254, 'PX002', true)) AS form) l
             WHERE pyxp.emails_lowered_until() IS NOT NULL
               AND EXISTS (SELECT FROM pyxp.agency_b2c_clients a
                            WHERE a.client_email = l.form AND a.created_at < pyxp.emails_lowered_until())
            UNION ALL
            SELECT e.stored_form FROM pyxp.xp_email_forms_before_0028 e WHERE e.client_email = p_email_now) f
$$;

-- Campaign type: B2C, AGENCY_B2C, INDIVIDUAL, case-insensitive, also in the
-- platform's creator_type spelling FOR_B2C, FOR_AGENCY_B2C, FOR_INDIVIDUAL.
-- Upper-cased as ASCII (COLLATE "C"), like votes and formula input names:
-- under ICU tr-TR upper('individual') is İNDİVİDUAL (0028, a hostile test).
-- NULL stays NULL (callers decide whether it may be omitted) (PX003).
-- Trimmed of whitespace of any kind, as wallets and ids (0048: btrim took
-- spaces only, and B2C with a tab or a no-break space was PX003).
CREATE FUNCTION pyxp.checked_campaign_type(p_type text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := CASE WHEN octet_length(p_type) <= 64 THEN regexp_replace(upper(pyxp.trimmed_text(p_type, false) COLLATE "C"), '^FOR_', '') END;
BEGIN
    IF p_type IS NULL THEN
        RETURN NULL;
    ELSIF v IN ('B2C', 'AGENCY_B2C', 'INDIVIDUAL') THEN
        RETURN v;
    END IF;
    RAISE EXCEPTION 'unknown campaign type: %', quote_literal(left(p_type, 100))
        USING ERRCODE = 'PX003',
              HINT = 'accepted: B2C, AGENCY_B2C, INDIVIDUAL (any case), or FOR_B2C, FOR_AGENCY_B2C, FOR_INDIVIDUAL';
END
$$;

-- Vote decision: VALID or REFUSE, case-insensitive, trimmed as campaign
-- types (PX008).
CREATE FUNCTION pyxp.checked_vote(p_decision text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := CASE WHEN octet_length(p_decision) <= 64 THEN upper(pyxp.trimmed_text(p_decision, false) COLLATE "C") END;
BEGIN
    IF v IN ('VALID', 'REFUSE') THEN
        RETURN v;
    END IF;
    RAISE EXCEPTION 'invalid vote decision: %', coalesce(quote_literal(left(p_decision, 100)), 'NULL')
        USING ERRCODE = 'PX008', HINT = 'accepted: VALID or REFUSE';
END
$$;

-- Opaque identifiers (campaign id, completion id, idempotency key, reason):
-- cleaned_text without NFKC (ids are compared as given: a key stored by an
-- earlier version must still match its retry), non-empty, at most p_max
-- characters (PX016).
CREATE FUNCTION pyxp.checked_identifier(p_what text, p_value text, p_max integer DEFAULT 128)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.cleaned_text(p_what, p_value, p_max, 'PX016', false);
BEGIN
    IF v IS NULL OR v = '' THEN
        RAISE EXCEPTION 'invalid %: %', p_what, coalesce(quote_literal(left(p_value, 40)), 'NULL')
            USING ERRCODE = 'PX016', HINT = format('%s is a non-empty text of at most %s characters', p_what, p_max);
    ELSIF length(v) > p_max THEN
        RAISE EXCEPTION 'invalid %: % (% characters)', p_what, quote_literal(left(v, 40) || '...'), length(v)
            USING ERRCODE = 'PX016', HINT = format('%s has at most %s characters', p_what, p_max);
    END IF;
    RETURN v;
END
$$;

-- Numbers given to formulas (prices, MINT values): finite, >= 0, <= 10^15.
-- NULL stays NULL (PX004).
CREATE FUNCTION pyxp.checked_number(p_what text, p_value numeric)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    ELSIF p_value = 'NaN'::numeric OR p_value IN ('Infinity'::numeric, '-Infinity'::numeric) THEN
        RAISE EXCEPTION 'invalid %: % is not a finite number', p_what, p_value
            USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
    ELSIF p_value < 0 OR p_value > 1e15 THEN
        -- Cut past 40 characters: 1e130000 printed in full made a 130 kB
        -- message (0028, a hostile test).
        RAISE EXCEPTION 'invalid %: % is out of range', p_what,
                        CASE WHEN length(p_value::text) <= 40 THEN p_value::text
                             ELSE format('%s… (%s characters)', left(p_value::text, 30), length(p_value::text)) END
            USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
    END IF;
    RETURN p_value;
END
$$;

-- Formula inputs of pyxp.award(): a JSON object of at most 64 numbers. Names
-- are normalised as in the config seed (upper case, `$` dropped:
-- MINT_VALUE_$WINC = MINT_VALUE_WINC); each value passes checked_number and
-- loses trailing zeros (300.0 is 300).
-- The cap keeps the per-key loop below cheap.
-- A formula input's name as params are read: upper case, $ dropped
-- (MINT_VALUE_$WINC is MINT_VALUE_WINC, as in the config seed). A SQL
-- function: inlined where it is called. Shared by checked_params and the
-- context's check in pyxp.planned_awards (0041).
CREATE FUNCTION pyxp.param_name(p_key text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT upper(replace(p_key, '$', '') COLLATE "C") $$;

CREATE FUNCTION pyxp.checked_params(p_params jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_item record;
    v_result jsonb := '{}';
BEGIN
    IF p_params IS NULL OR p_params = '{}' THEN  -- no inputs (most awards): no query
        RETURN v_result;
    ELSIF pg_column_size(p_params) > 65536 THEN  -- size before work: 64 inputs fit in far less
        RAISE EXCEPTION 'invalid params: % bytes', pg_column_size(p_params)
            USING ERRCODE = 'PX017', HINT = 'params holds at most 64 formula inputs';
    ELSIF jsonb_typeof(p_params) <> 'object' THEN
        RAISE EXCEPTION 'invalid params: % is not a JSON object', left(p_params::text, 100)
            USING ERRCODE = 'PX017', HINT = 'params is an object of formula inputs, e.g. {"PRICE_COMPLETION": 300}';
    ELSIF (SELECT count(*) FROM jsonb_object_keys(p_params)) > 64 THEN
        RAISE EXCEPTION 'invalid params: % inputs', (SELECT count(*) FROM jsonb_object_keys(p_params))
            USING ERRCODE = 'PX017', HINT = 'params holds at most 64 formula inputs';
    END IF;
    FOR v_item IN SELECT key, value FROM jsonb_each(p_params) LOOP
        IF length(v_item.key) > 64 OR v_item.key !~ '^[A-Za-z_$][A-Za-z0-9_$]*$' THEN
            RAISE EXCEPTION 'invalid params: input name %', quote_literal(left(v_item.key, 70))
                USING ERRCODE = 'PX017', HINT = 'input names are identifiers of at most 64 characters, e.g. PRICE_COMPLETION';
        ELSIF jsonb_typeof(v_item.value) <> 'number' THEN
            RAISE EXCEPTION 'invalid %: % is not a number', v_item.key, left(v_item.value::text, 100)
                USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
        END IF;
        IF v_result ? pyxp.param_name(v_item.key) THEN
            RAISE EXCEPTION 'invalid params: input % given twice', pyxp.param_name(v_item.key)
                USING ERRCODE = 'PX017', HINT = 'input names are case-insensitive and ignore $: give each once';
        END IF;
        -- trim_scale: 300.0 and 300 are one input (a generic award's claim
        -- keeps a digest of its inputs' text).
        v_result := v_result || jsonb_build_object(
            pyxp.param_name(v_item.key),
            trim_scale(pyxp.checked_number(v_item.key, v_item.value::numeric)));
    END LOOP;
    RETURN v_result;
END
$$;

-- Free-form context stored in the ledger row's metadata: a JSON object of at
-- most 16 KiB and 16 levels of nested objects/arrays (PX017).
CREATE FUNCTION pyxp.checked_context(p_context jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_context IS NULL THEN
        RETURN '{}';
    ELSIF pg_column_size(p_context) > 65536 THEN  -- size before work: no copy of a huge value
        RAISE EXCEPTION 'invalid context: % bytes', pg_column_size(p_context)
            USING ERRCODE = 'PX017', HINT = 'context is at most 16 KiB of JSON';
    ELSIF jsonb_typeof(p_context) <> 'object' THEN
        RAISE EXCEPTION 'invalid context: % is not a JSON object', left(p_context::text, 100)
            USING ERRCODE = 'PX017', HINT = 'context is a JSON object, e.g. {"note": "manual bonus"}';
    ELSIF octet_length(p_context::text) > 16384 THEN
        RAISE EXCEPTION 'invalid context: % bytes', octet_length(p_context::text)
            USING ERRCODE = 'PX017', HINT = 'context is at most 16 KiB of JSON';
    ELSIF jsonb_path_exists(p_context, 'lax $.**{17}') THEN  -- level 17 = a value inside a 17th container
        RAISE EXCEPTION 'invalid context: nested deeper than 16 levels'
            USING ERRCODE = 'PX017', HINT = 'context is at most 16 levels deep';
    END IF;
    RETURN p_context;
END
$$;

-- Row counts asked by readers (history, leaderboard): 1..1000 (PX023).
CREATE FUNCTION pyxp.checked_row_count(p_what text, p_value integer, p_max integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_value IS NULL OR p_value < 1 OR p_value > p_max THEN
        RAISE EXCEPTION 'invalid %: %', p_what, coalesce(p_value::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = format('%s is between 1 and %s', p_what, p_max);
    END IF;
    RETURN p_value;
END
$$;

-- The caller's key of a generic award (pyxp.award, pyxp.award_many): an
-- identifier of at most 256 characters outside the namespaces of the keys
-- the flow functions derive (campaign.created:..., reverse:..., ...), so a
-- manual award can never pose as, or block, a flow's award (PX016).
CREATE FUNCTION pyxp.checked_award_key(p_key text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.checked_identifier('idempotency key', p_key, 256);
BEGIN
    IF v ~ '^(campaign[.](created|approved|vote)|completion[.](submitted|outcome|vote)|client[.]onboarded|reverse|rules[.]adjustment)(/[0-9]+)?:' THEN
        RAISE EXCEPTION 'invalid idempotency key %: reserved for pyxp''s own flows', quote_literal(v)
            USING ERRCODE = 'PX016',
                  HINT = 'keys starting with campaign.*:, completion.*:, client.onboarded:, reverse: or rules.adjustment: are pyxp''s';
    END IF;
    RETURN v;
END
$$;

-- A text field of a generic award's context that also fills a ledger column
-- (campaign_id, subject): checked like an identifier when it is a JSON
-- string, NULL otherwise.
CREATE FUNCTION pyxp.context_column(p_context jsonb, p_field text, p_max integer)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(p_context -> p_field) = 'string'
                THEN pyxp.checked_identifier(replace(p_field, '_', ' '), p_context ->> p_field, p_max) END
$$;

-- Isolation (SPEC 4): the writing functions read the active ruleset, the
-- registry and pending registrations after taking their locks, which only
-- works when each statement sees what committed before it: READ COMMITTED.
-- In a REPEATABLE READ or SERIALIZABLE transaction the snapshot predates the
-- locks (an award under a ruleset deactivated meanwhile, a registration left
-- pending after its client's onboarding), so they refuse (PX025) before
-- writing anything. READ UNCOMMITTED is READ COMMITTED in PostgreSQL, and is
-- accepted (0028: it was refused).
CREATE FUNCTION pyxp.require_read_committed()
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN
        RAISE EXCEPTION 'pyxp writes run in READ COMMITTED transactions, not %',
                        upper(current_setting('transaction_isolation') COLLATE "C")
            USING ERRCODE = 'PX025',
                  HINT = 'call it in a READ COMMITTED transaction (PostgreSQL''s default): '
                         'BEGIN ISOLATION LEVEL READ COMMITTED, or outside your '
                         || upper(current_setting('transaction_isolation') COLLATE "C") || ' transaction';
    END IF;
END
$$;
